"""One-command GPU session: every measurement that needs a GPU, inside a time budget, as files to commit.

    python -m bench gpu-session [--budget-s 480] [--out DIR] [--steps env,tests,...] [--dry-run]

Steps, in order, each ending by its deadline (cumulative shares of the budget, bench.session_plan) and
writing its JSON the moment it ends (the layer step also after every case), so a session stopped from
outside keeps everything finished so far:
  env      environment (device, driver, versions, clocks), measured ceilings, detected features, the plan
           and its time estimate                                                        -> env.json
  tests    a chosen subset of the GPU tests (pytest subprocess, per-test results)     -> tests.json
  warmup   compile the Triton kernels the next steps use, in parallel processes        -> warmup.json
  layers   the compact layer matrix (StyleGAN2-256 ladder, bf16, fwd and fwd+bwd)     -> layers.json, layers.png
  e2e      256 px generator images/s at batch 16 and one training iteration at batch 4 -> e2e.json
  onnx     onnxruntime (CUDA provider where present) vs PyTorch images/s, parity     -> onnx.json
and summary.md, rewritten after every step. Everything goes to DIR/<device>-<date>/ (eight files at most),
named so that the folder can be committed as it is under bench/results/.

--dry-run runs the same steps on the CPU on tiny shapes (reference paths; the fused path through
Triton's interpreter) into DIR/cpu-<date>-dry/: it tests the session itself, not the speed.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Optional, Sequence

from bench.session_runner import Session, log, session_folder

TRITON_CACHE = "/tmp/colorgan-triton-cache"


# ----------------------------------------------------------------------------- main

def build_parser() -> argparse.ArgumentParser:
    from bench import session_plan

    p = argparse.ArgumentParser(prog="python -m bench gpu-session", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget-s", type=float, default=480.0, help="seconds for the whole session (default 480)")
    p.add_argument("--out", default=None, help="parent folder of the session folder (default bench/results)")
    p.add_argument("--steps", default=",".join(session_plan.STEPS),
                   help=f"comma-separated subset of {','.join(session_plan.STEPS)} (run in that order; env always "
                        "runs: every session folder records its environment)")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes: exercise every step without a GPU")
    p.add_argument("--channels-last", default="auto", choices=("auto", "on", "off"),
                   help="activation layout of the layer step: auto = channels-last where the fused path "
                        "declares it")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    from bench import session_plan

    steps = [s for s in session_plan.STEPS if s in set(args.steps.split(",")) | {"env"}]  # env.json always
    unknown = set(args.steps.split(",")) - set(session_plan.STEPS)
    if unknown or not steps:
        raise SystemExit(f"--steps: unknown {sorted(unknown)}; choose from {','.join(session_plan.STEPS)}")
    if args.budget_s <= 0:
        raise SystemExit(f"--budget-s must be positive, got {args.budget_s}")

    import torch

    if args.dry_run:
        dev = torch.device("cpu")
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before any kernel module is imported
        plan = session_plan.DRY
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: the GPU session needs one (use --dry-run on the CPU)")
        dev = torch.device("cuda")
        os.environ.setdefault("TRITON_CACHE_DIR", TRITON_CACHE)
        plan = session_plan.GPU
    from bench import common, session_steps

    out_root = Path(args.out) if args.out else common.RESULTS_DIR
    folder = session_folder(out_root, common.device_slug(dev), args.dry_run)
    folder.mkdir(parents=True, exist_ok=True)
    command = "python -m bench gpu-session " + shlex.join(argv)
    session = Session(folder, args.budget_s, steps, plan, dev, args.dry_run, command)
    log(f"GPU session{' (dry run)' if args.dry_run else ''}: {', '.join(steps)} in {args.budget_s:.0f} s -> {folder}")
    session.env = session_steps.environment(session)  # cheap; every step file carries device and versions
    ctx = session_steps.Context(session, channels_last=args.channels_last)
    for step in steps:
        if session.elapsed() >= session.deadlines[step]:
            why = f"no time left: {session.elapsed():.1f} s elapsed, the step's deadline was {session.deadlines[step]:.1f} s"
            session.run(step, lambda deadline, why=why: {"status": "skipped", "reason": why})
            continue
        session.run(step, lambda deadline, fn=getattr(session_steps, f"step_{step}"): fn(ctx, deadline))
    session.write_summary()
    from bench import session_report

    print(session_report.summary(folder, brief=True))
    print(f"files: {', '.join(sorted(p.name for p in folder.iterdir()))} in {folder}")
    print(f"session: {session.elapsed():.0f} s of {args.budget_s:.0f}")
    return 0
