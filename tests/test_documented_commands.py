"""Every `pneumoscan` command line quoted in the README, the docs, studies/ and benchmarks/ parses with today's
options (issue 21): a renamed or removed option fails here, not in a reader's terminal. Synopsis lines (with
`[optional]` parts, `A|B` choices or `...`) are templates, not commands, and are skipped; `<placeholders>` are
read as one word."""

import argparse
import re
import shlex
from pathlib import Path

import pytest

from pneumoscan.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), *sorted((ROOT / "studies").rglob("*.md")),
           *sorted((ROOT / "benchmarks").rglob("*.py")), *sorted((ROOT / "studies").rglob("*.py")),
           *sorted((ROOT / "configs").rglob("*.toml"))]
INVOCATION = re.compile(r"(?:^|[\s`(])(?:\S*/)?(?:pneumoscan|python -m pneumoscan)\s+([a-z]+\b[^`\n]*)")
TEMPLATE = re.compile(r"\[|\]|\.\.\.|\||…|\{|\}")


def _logical_lines(text: str) -> list[str]:
    """Lines with backslash continuations joined."""
    return text.replace("\\\n", " ").splitlines()


def _quoted(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of what a file shows as code: in Markdown the fenced blocks and the `inline spans`
    (prose that names a command is not a command line); in Python, TOML and shell files every line."""
    lines = _logical_lines(path.read_text(encoding="utf-8"))
    if path.suffix != ".md":
        return list(enumerate(lines, 1))
    quoted, fenced = [], False
    for number, line in enumerate(lines, 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            quoted.append((number, line))
        else:
            quoted.extend((number, f"`{span}`") for span in re.findall(r"`([^`]+)`", line))
    return quoted


def documented_commands() -> list[tuple[str, str]]:
    """(where, command line after `pneumoscan`) for every quoted invocation that is not a template."""
    found = []
    for path in SOURCES:
        for number, line in _quoted(path):
            for match in INVOCATION.finditer(line):
                command = match.group(1).split(" # ")[0].strip().rstrip(").,;:")
                words = command.split()
                # a template, another word, or a command named without options (a reference in prose)
                if TEMPLATE.search(command) or words[0] not in _commands() or not any(w.startswith("-") for w in words):
                    continue
                found.append((f"{path.relative_to(ROOT)}:{number}", re.sub(r"<[^>]*>", "X", command)))
    return found


def _commands() -> set[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return set(action.choices)


def test_documentation_quotes_many_commands() -> None:
    assert len(documented_commands()) > 40


@pytest.mark.parametrize(("where", "command"), documented_commands())
def test_every_documented_command_line_parses(where: str, command: str) -> None:
    try:
        words = shlex.split(command, comments=True)
    except ValueError:
        pytest.skip(f"{where}: not a shell line")
    try:
        build_parser().parse_args(words)
    except SystemExit as stop:
        if stop.code not in (0, None):  # --help and --version exit 0
            pytest.fail(f"{where}: `pneumoscan {command}` does not parse")
