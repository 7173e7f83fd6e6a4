"""The `--json` document; the output-folder checks (`lossbench.api.folders`) for the commands
that check a folder before they start work."""

from __future__ import annotations

from typing import Any

from lossbench.api.folders import check_output_file, check_output_folder, check_run_folder


def print_json(document: Any) -> None:
    """`--json`: one JSON document on standard output; NaN and infinity become null (strict
    parsers reject them)."""
    import json
    import sys

    from lossbench.compare.report.outputs import finite

    sys.stdout.write(json.dumps(finite(document), indent=2, allow_nan=False) + "\n")
    sys.stdout.flush()


__all__ = ["check_output_file", "check_output_folder", "check_run_folder", "print_json"]
