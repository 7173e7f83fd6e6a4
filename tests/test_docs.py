"""Every command in README.md and docs/ names what exists.

The fenced `bash` blocks are read line by line (a trailing backslash joins lines): a
`lossbench` line must name an existing command and only options that command (or the
application) has; a `make` line an existing Makefile target; a `python bench/...` line an
existing script and only options that script declares.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer.main

from lossbench.cli import app

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"```bash\n(.*?)```", re.DOTALL)


def shell_lines(text: str) -> list[str]:
    """The commands of every ```bash block, continuation lines joined, comments dropped."""
    lines: list[str] = []
    for block in FENCE.findall(text):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            command = line.split(" #", 1)[0].strip()
            if command and not command.startswith("#"):
                lines.append(command)
    return lines


def commands_of(line: str) -> list[list[str]]:
    """`a && b`, `a; b` and `a | b` are several commands."""
    parts = re.split(r"\s*(?:&&|;|\|\|?)\s*", line)
    return [shlex.split(part) for part in parts if part.strip()]


def documented_commands() -> list[tuple[str, list[str]]]:
    found = []
    for path in DOC_FILES:
        for line in shell_lines(path.read_text()):
            for words in commands_of(line):
                found.append((path.name, words))
    return found


CLI = typer.main.get_command(app)


def option_names(command: object) -> set[str]:
    names: set[str] = set()
    for param in getattr(command, "params", []):
        names.update(getattr(param, "opts", []))
        names.update(getattr(param, "secondary_opts", []))
    return names


def check_lossbench(words: list[str]) -> None:
    allowed = option_names(CLI)
    rest = words[1:]
    while rest and rest[0].startswith("-"):  # global options before the command
        rest = rest[2:] if rest[0] in allowed and "=" not in rest[0] else rest[1:]
    if not rest or rest[0] in {"--help", "--version"}:
        return
    commands = getattr(CLI, "commands", {})
    assert rest[0] in commands, f"no command {rest[0]!r} in: {' '.join(words)}"
    allowed |= option_names(commands[rest[0]])
    for word in rest[1:]:
        if word.startswith("--"):
            name = word.split("=", 1)[0]
            assert name in allowed, f"{rest[0]} has no option {name}: {' '.join(words)}"


def makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([a-zA-Z][\w-]*):", text, re.MULTILINE))


def check_python(words: list[str]) -> None:
    script = ROOT / words[1]
    assert script.is_file(), f"no script {words[1]}"
    source = script.read_text()
    for word in words[2:]:
        if word.startswith("--"):
            name = word.split("=", 1)[0]
            assert f'"{name}"' in source, f"{words[1]} declares no option {name}"


DOCUMENTED = documented_commands()


def test_the_docs_have_commands() -> None:
    assert any(words[0] == "lossbench" for _, words in DOCUMENTED)
    assert any(words[0] == "make" for _, words in DOCUMENTED)


@pytest.mark.parametrize(
    ("page", "words"), DOCUMENTED, ids=[f"{p}:{' '.join(w)[:60]}" for p, w in DOCUMENTED]
)
def test_documented_command_exists(page: str, words: list[str]) -> None:
    if words[0] == "lossbench":
        check_lossbench(words)
    elif words[0] == "make":
        assert set(words[1:]) <= makefile_targets(), f"{page}: unknown make target in {words}"
    elif words[0] == "python" and len(words) > 1 and words[1].endswith(".py"):
        check_python(words)


def test_a_wrong_option_is_caught() -> None:
    with pytest.raises(AssertionError, match="no option --bogus"):
        check_lossbench(["lossbench", "compare", "--bogus", "1"])
    with pytest.raises(AssertionError, match="no command"):
        check_lossbench(["lossbench", "comparee"])
