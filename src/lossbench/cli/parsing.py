"""Option text as request values: comma lists and seeds, each bad value one line naming its
flag."""

from __future__ import annotations

from lossbench.errors import LossbenchError


def names_list(text: str | None, flag: str) -> tuple[str, ...] | None:
    """'a, b,c' -> ('a', 'b', 'c'); an empty list is an error (None: not given)."""
    if text is None:
        return None
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    if not names:
        valid = ""
        if flag == "--losses":
            from lossbench.losses import LOSSES

            valid = f"; valid losses: {', '.join(LOSSES)}"
        raise LossbenchError(f"{flag} is empty{valid}")
    return names


def seeds_list(text: str | None) -> tuple[int, ...] | None:
    names = names_list(text, "--seeds")
    if names is None:
        return None
    try:
        return tuple(int(name) for name in names)
    except ValueError:
        raise LossbenchError(f"--seeds must be integers such as 0,1,2, not {text!r}") from None
