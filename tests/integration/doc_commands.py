"""The shell commands a Markdown page shows, as a reader would type them.

A fenced block is a shell block when its language is `bash`, `sh`, `shell` or `console`; every
other language (`text`, `json`, `python`, ...) is something a reader does not type. A fence
without a language is refused (`bare_fences`): a page must say which one it means, so a new
command cannot slip past the docs test in an unlabelled block.

In a shell block, `\\` continuations are joined, comments and blank lines dropped, and each
command keeps the line of the page it starts on (for messages). A `console` block's commands
are its `$ ` lines; the rest is their output.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from ledger.compile import PROJECT_ROOT

SHELL_LANGUAGES = frozenset({"bash", "sh", "shell", "console"})

_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>```+|~~~+)(?P<lang>[^\s`]*)")


@dataclass(frozen=True)
class Block:
    """A fenced block of a page."""

    path: Path
    line: int  # the opening fence's line, from 1
    language: str  # "" for a bare fence
    lines: tuple[str, ...]  # its text, the fence's indentation taken off

    @property
    def is_shell(self) -> bool:
        return self.language in SHELL_LANGUAGES


@dataclass(frozen=True)
class Command:
    """One command of a shell block, as typed."""

    path: Path
    line: int  # where it starts on the page
    text: str  # the command, continuations joined, comment dropped, words re-quoted
    argv: tuple[str, ...]

    @property
    def where(self) -> str:
        return f"{page_name(self.path)}:{self.line}"


def page_name(path: Path) -> str:
    """The page's path in the repository, e.g. `docs/client.md`."""
    return str(path.relative_to(PROJECT_ROOT)) if path.is_relative_to(PROJECT_ROOT) else str(path)


def blocks(path: Path) -> list[Block]:
    """Every fenced block of the page, in order."""
    lines = path.read_text().splitlines()
    found = []
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        indent, fence = len(opening["indent"]), opening["fence"]
        end = index + 1
        while end < len(lines) and not lines[end].strip().startswith(fence):
            end += 1
        body = tuple(
            line[indent:] if line[:indent].isspace() else line.lstrip()
            for line in lines[index + 1 : end]
        )
        found.append(Block(path, index + 1, opening["lang"], body))
        index = end + 1
    return found


def bare_fences(path: Path) -> list[int]:
    """The lines of the page's fences that name no language."""
    return [block.line for block in blocks(path) if not block.language]


def commands(path: Path) -> list[Command]:
    """Every command of the page's shell blocks, in order."""
    found = []
    for block in blocks(path):
        if block.is_shell:
            found += _block_commands(block)
    return found


def _block_commands(block: Block) -> list[Command]:
    found = []
    pending: list[str] = []
    start = 0
    for offset, raw in enumerate(block.lines):
        line = raw
        if block.language == "console" and not pending:
            if not line.startswith("$ "):
                continue  # output
            line = line[2:]
        if not pending:
            start = block.line + 1 + offset
        if line.rstrip().endswith("\\"):
            pending.append(line.rstrip()[:-1])
            continue
        pending.append(line)
        words = shlex.split(" ".join(pending), comments=True)
        pending = []
        if words:
            found.append(Command(block.path, start, shlex.join(words), tuple(words)))
    return found
