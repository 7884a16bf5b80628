"""What `colorgan pretrain` and `colorgan train` share: run options, and starting or resuming a run."""
from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Any, Callable, Optional

from colorgan.options import flag, given_options, option_fields
from colorgan.train.loop import RESUME_CHANGES, RunOptions


def add_run_options(p: argparse.ArgumentParser) -> None:
    """Options of a training command that do not change what the run computes."""
    p.add_argument("--out", help="run folder to create")
    p.add_argument("--resume", metavar="RUN",
                   help="continue the run in folder RUN with its saved settings (only --iter may be given, to "
                        "lengthen or shorten it)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier colorgan run folder given as --out (refused for any other folder)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available; torchrun: the local GPU), cpu, cuda")
    p.add_argument("--amp", default="auto", choices=("auto", "off", "bf16"),
                   help="mixed precision for the main loss passes: auto = bf16 on CUDA, off on CPU (default auto)")
    p.add_argument("--stop-at", type=int, default=None, metavar="STEP",
                   help="stop after this many (global) iterations, writing the state, e.g. to split a run into "
                        "jobs; continue with --resume")
    p.add_argument("--channels-last", action="store_true",
                   help="models and batches in channels-last memory format (measured 1.1x faster on a 2-core CPU: "
                        "`python -m bench cpu-train`)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def cli_words(cls: type) -> dict[str, str]:
    """A config's field names as options, for error messages (see colorgan.cli.in_cli_words)."""
    return {f.name: flag(cls, f.name) for f in option_fields(cls)}


def start_or_resume(args: argparse.Namespace, fn: Callable[..., dict], cls: type,
                    config: Optional[dict[str, Any]] = None) -> Optional[dict]:
    """Run `fn` (pretrain or train) as a new run of config class `cls` or with --resume; None on ranks
    other than 0. config: settings from the command line other than `cls`'s options."""
    given = {**given_options(args, cls), **(config or {})}
    options = RunOptions(device=args.device, amp=args.amp, progress=not args.no_progress, stop_at=args.stop_at,
                         channels_last=args.channels_last, inception=getattr(args, "inception", None))
    if args.resume:
        if args.out and args.out != args.resume:
            raise ValueError("give either --resume RUN or --out RUN, not both")
        fixed = [flag(cls, k) for k in given if k not in RESUME_CHANGES]
        if fixed:
            raise ValueError(f"--resume {args.resume} continues the run with the settings it was started with; "
                             f"{', '.join(fixed)} cannot be changed on resume (only --iter can); start a new run "
                             f"with --out to change them")
        summary = fn(None, args.resume, options=options, resume=True, changes=given)
    else:
        missing = [flag(cls, f.name) for f in option_fields(cls)
                   if f.default is dataclasses.MISSING and f.name not in given] + ([] if args.out else ["--out"])
        if missing:
            raise ValueError(f"a new run needs {', '.join(missing)} (or --resume RUN)")
        summary = fn(cls(**given), args.out, options=options, overwrite=args.overwrite)
    return summary if os.environ.get("RANK", "0") == "0" else None
