"""The one domain exception, and the one way a validation error becomes it. Only the command
line's `main` (`lossbench.cli`) turns it into a one-line message and an exit code."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import TYPE_CHECKING


class LossbenchError(Exception):
    """A problem the user can fix: the message says what is wrong and what to do."""


class PeerLost(LossbenchError):
    """A rank of a data-parallel run lost its peers (one died or hung): not a failure of the
    run itself, which resumes from its last checkpoint when the command is run again."""


if TYPE_CHECKING:
    from pydantic import ValidationError
    from pydantic_core import ErrorDetails

# (where, message, the detail) -> one problem's words; `where` is the dotted location
# ("" for the whole object) and `message` pydantic's without its "Value error, " prefix.
DescribeProblem = Callable[[str, str, "ErrorDetails"], str]


def validation_failure(error: ValidationError, describe: DescribeProblem) -> LossbenchError:
    """Every problem pydantic found, each in `describe`'s words, on one line joined by '; ':
    a request with three mistakes names all three at once."""
    lines = [
        describe(
            ".".join(str(part) for part in detail["loc"]),
            str(detail["msg"]).removeprefix("Value error, "),
            detail,
        )
        for detail in error.errors()
    ]
    return LossbenchError("; ".join(dict.fromkeys(lines)))


def one_of(value: str, names: Collection[str], unknown: str) -> str:
    """`value` when it is one of `names`, for a pydantic field validator; else a ValueError
    worded by `unknown`, a template with `{value!r}` and `{names}` (comma-joined)."""
    if value not in names:
        raise ValueError(unknown.format(value=value, names=", ".join(names)))
    return value


def joined(problems: list[LossbenchError]) -> LossbenchError:
    """Several problems of one request as one error, each named once, joined by '; '."""
    return LossbenchError("; ".join(dict.fromkeys(str(problem) for problem in problems)))
