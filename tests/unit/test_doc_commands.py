"""Every ``reranker`` command in the README and docs/ parses as written: the command exists, and
so does each option, with a value of the right kind.

Commands are read from fenced code blocks (a block marked ``text`` is a synopsis, not a
command). Placeholders of the experiment write-ups (``<dataset>``, ``$E``) stand for the values
below; ``runs/`` is where the documented commands write, so a file a command reads from there
is produced by an earlier one and only its option is checked.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from reranker.cli import main

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
PLACEHOLDERS = {
    "<dataset>": "scifact",
    "<k>": "20",
    "<w>": "0.7",
    "$E": "models/all-MiniLM-L6-v2-scifact-se",
    "$A": "models/reranker-minilm-l6-aware",
    "models/...": "models/blends",
}
SYNOPSIS_LANGUAGES = {"text", "json", "http", "python", "yaml", "console-output"}
COMMAND = re.compile(r"^(?:\$ )?(?:[A-Z_]+=\S+ )*(?:\.venv/bin/)?reranker (?P<args>.*)$")


def documented_commands() -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for language, block in re.findall(r"```([\w-]*)\n(.*?)```", text, re.S):
            if language in SYNOPSIS_LANGUAGES:
                continue
            for line in block.replace("\\\n", " ").splitlines():
                match = COMMAND.match(line.strip())
                if match:
                    args = re.split(r"\s+#\s|\s&&\s", match["args"])[0].strip().rstrip("&")
                    for placeholder, value in PLACEHOLDERS.items():
                        args = args.replace(placeholder, value)
                    found.append((f"{doc.relative_to(REPO)}: {args[:60]}", args.strip()))
    return found


COMMANDS = documented_commands()


def test_the_docs_hold_commands_to_check() -> None:
    assert len(COMMANDS) >= 50


def parse(args: list[str]) -> None:
    """Parse ``args`` down to the leaf command, as click would before running it."""
    command: click.Command = main
    ctx = main.make_context("reranker", args)
    while isinstance(command, click.Group):
        name, sub, rest = command.resolve_command(ctx, [*ctx._protected_args, *ctx.args])
        assert sub is not None and name is not None
        ctx = sub.make_context(name, rest, parent=ctx)
        command = sub


@pytest.mark.parametrize("args", [c[1] for c in COMMANDS], ids=[c[0] for c in COMMANDS])
def test_documented_command_parses(args: str) -> None:
    words = [w for w in shlex.split(args) if w != "..."]
    try:
        parse(words)
    except click.exceptions.Exit:
        pass  # --help, --version
    except click.BadParameter as exc:
        # a file an earlier documented command writes under runs/
        if "does not exist" not in exc.format_message() or "runs/" not in exc.format_message():
            raise
