"""The `colorgan` console command.

Each subcommand lives in its own module under `colorgan/commands/` and exposes
`register(subparsers)` (adds its parser and sets `func`) — new commands plug in
without touching this file.
"""
from __future__ import annotations

import argparse
import errno
import faulthandler
import importlib
import pkgutil
import re
import signal
import sys
from typing import Sequence

from colorgan import __version__
from colorgan import commands as _commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="colorgan",
        description="Continual few-shot image generation with per-task low-rank adapters.",
    )
    parser.add_argument("--version", action="version", version=f"colorgan {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(_commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{_commands.__name__}.{info.name}")
        module.register(sub)
    return parser


OS_HINTS = {errno.ENOSPC: "the disk is full; free some space and run again",
            errno.EACCES: "permission denied; choose a folder you can write to",
            errno.EPERM: "operation not permitted; choose a folder you can write to",
            errno.EROFS: "the file system is read-only; choose another folder",
            errno.ENOTDIR: "a path component is a file, not a folder",
            errno.EISDIR: "a folder is where a file was expected"}


# library messages name parameters ("pass overwrite=True (CLI: --overwrite)"); the CLI shows its own spelling
CLI_SPELLING = re.compile(r"\w+=True \(CLI: (--[\w-]+)\)")


def describe_error(exc: BaseException) -> str:
    """One line for the user: the library's own message (in the CLI's spelling), or for an OS error what
    failed, where, and what to do."""
    if isinstance(exc, KeyError) and exc.args:
        return CLI_SPELLING.sub(r"\1", str(exc.args[0]))
    if isinstance(exc, OSError) and exc.errno is not None:
        where = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
        hint = OS_HINTS.get(exc.errno, "")
        return f"{exc.strerror or exc}{': ' + where if where else ''}" + (f" ({hint})" if hint else "")
    return CLI_SPELLING.sub(r"\1", str(exc))


def in_cli_words(message: str, words: dict[str, str]) -> str:
    """A library message that starts with a parameter name ("truncation must be ...") in the command's own
    spelling ("--trunc must be ..."); `words` maps parameter names to options."""
    if not words:
        return message
    pattern = re.compile(r"^(" + "|".join(map(re.escape, sorted(words, key=len, reverse=True))) + r")\b")
    return pattern.sub(lambda m: words[m.group(1)], message)


def interrupted_hint(args: argparse.Namespace) -> str:
    """How to carry on after Ctrl-C: training runs resume from their last save."""
    run = getattr(args, "resume", None) or getattr(args, "out", None)
    if args.command in ("pretrain", "train") and run:
        return f"; continue from the last save with `colorgan {args.command} --resume {run}`"
    return ""


def dump_stacks_on_sigusr1() -> None:
    """`kill -USR1 PID` prints every thread's stack to the process's real stderr (a run that seems stuck)."""
    err = sys.__stderr__
    if not hasattr(signal, "SIGUSR1") or err is None:
        return
    try:
        faulthandler.register(signal.SIGUSR1, file=err, all_threads=True)
    except (ValueError, OSError, AttributeError):  # io.UnsupportedOperation is both: a stderr without a descriptor
        pass


def main(argv: Sequence[str] | None = None) -> int:
    dump_stacks_on_sigusr1()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"colorgan {args.command}: interrupted; every file is written whole or not at all, so nothing "
              f"half-written was kept{interrupted_hint(args)}", file=sys.stderr)
        return 130
    except (ValueError, KeyError, OSError, RuntimeError) as exc:
        msg = in_cli_words(describe_error(exc), getattr(args, "cli_words", {}))
        print(f"colorgan {args.command}: error: {msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
