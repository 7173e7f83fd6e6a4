"""Where lossbench keeps its files."""

from __future__ import annotations

import os
from pathlib import Path


def default_data_dir() -> Path:
    """`$LOSSBENCH_DATA_DIR`, else `$XDG_CACHE_HOME/lossbench`, else `~/.cache/lossbench`."""
    if env := os.environ.get("LOSSBENCH_DATA_DIR"):
        return Path(env)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "lossbench"


USER_REGISTRY_FILE = "user-datasets.toml"
USER_REGISTRY_ENV = "LOSSBENCH_REGISTRY"


class UserRegistry:
    """Set by the CLI: the registry `--registry` names (None: not given; then
    `$LOSSBENCH_REGISTRY`, else `user-datasets.toml` in the data dir a caller names)."""

    path: Path | None = None
