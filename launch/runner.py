"""Running (or, with ``--dry_run``, only printing) the launchers' commands.

Every command is an argument list handed to ``subprocess`` without a shell, so no user
string is ever interpreted by a local shell.  The dry-run runner prints each command as
one copy-pastable shell line (``shlex.join``) and records it, which is also what the
tests assert on.
"""
from __future__ import annotations

import shlex
import subprocess
import sys
from typing import Sequence, TextIO


class CommandFailed(RuntimeError):
    """A launched command exited non-zero."""


class SubprocessRunner:
    """Runs commands for real; echoes each to stderr first."""

    def __init__(self, echo: TextIO | None = None):
        self.echo = sys.stderr if echo is None else echo

    def note(self, text: str) -> None:
        print(f"# {text}", file=self.echo, flush=True)

    def run(self, argv: Sequence[str]) -> None:
        print(f"+ {shlex.join(argv)}", file=self.echo, flush=True)
        result = subprocess.run(list(argv), check=False)
        if result.returncode != 0:
            raise CommandFailed(f"exit code {result.returncode}: {shlex.join(argv)}")

    def probe(self, argv: Sequence[str]) -> tuple[int, str]:
        """Run a read-only query; return (exit code, stdout) without raising."""
        print(f"+ {shlex.join(argv)}", file=self.echo, flush=True)
        result = subprocess.run(list(argv), check=False, capture_output=True, text=True)
        return result.returncode, result.stdout.strip()


class DryRunRunner:
    """Prints and records every command; runs nothing.

    ``probe`` answers "not found" (exit code 1), so a dry run shows the full path a
    fresh launch takes (create, wait, install, train).
    """

    def __init__(self, out: TextIO | None = None):
        self.out = sys.stdout if out is None else out
        self.commands: list[list[str]] = []

    def note(self, text: str) -> None:
        print(f"# {text}", file=self.out)

    def run(self, argv: Sequence[str]) -> None:
        self.commands.append(list(argv))
        print(shlex.join(argv), file=self.out)

    def probe(self, argv: Sequence[str]) -> tuple[int, str]:
        self.commands.append(list(argv))
        print(shlex.join(argv), file=self.out)
        self.note("dry run: assuming the answer is 'not found'")
        return 1, ""
