"""`colorgan demo`: the pipeline end to end on a CPU in a few minutes (`make demo`)."""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="run the whole pipeline end to end (pretrain, adapt, generate, export)",
                              description="Draws small procedural data, pretrains a tiny base, adapts it to two "
                                          "10-shot tasks one after another, renders a comparison grid, exports a "
                                          "task to ONNX and prints what each task stores.")
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--base", default=None,
                   help="a base checkpoint folder: adapt it to the shipped emoji demo tasks instead of pretraining "
                        "a tiny base on procedural shapes")
    p.add_argument("--real", default=None, help="with --inception: a data root of `colorgan data emoji` "
                                                "(each task's full set) for KID/FID against the unadapted base")
    p.add_argument("--inception", default=None, help="TorchScript Inception FID network (see `colorgan eval`)")
    p.add_argument("--n-eval", type=int, default=1000, help="samples per task for KID/FID (default 1000)")
    p.add_argument("--pretrain-iter", type=int, default=2000)
    p.add_argument("--task-iter", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an earlier demo output in --out")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from colorgan.demo import run_demo

    if bool(args.real) != bool(args.inception):
        raise ValueError("KID/FID need both --real DATA and --inception PATH")
    run_demo(args.out, base=args.base, real=args.real, inception=args.inception, n_eval=args.n_eval,
             pretrain_iter=args.pretrain_iter, task_iter=args.task_iter, seed=args.seed, overwrite=args.overwrite,
             progress=not args.no_progress)
    return 0
