"""`colorgan demo`: the pipeline end to end on a CPU in a few minutes (`make demo`)."""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="run the whole pipeline end to end (pretrain, adapt, generate, export)",
                              description="Draws small procedural data, pretrains a tiny base, adapts it to two "
                                          "10-shot tasks one after another, renders a comparison grid, exports a "
                                          "task to ONNX and prints what each task stores.")
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--pretrain-iter", type=int, default=2000)
    p.add_argument("--task-iter", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an earlier demo output in --out")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from colorgan.demo import run_demo

    run_demo(args.out, pretrain_iter=args.pretrain_iter, task_iter=args.task_iter, seed=args.seed,
             overwrite=args.overwrite, progress=not args.no_progress)
    return 0
