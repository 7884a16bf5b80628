"""`colorgan demo`: the pipeline end to end on a CPU in about ten minutes (`make demo`)."""
from __future__ import annotations

import argparse

from colorgan.demo import default_real, run_demo
from colorgan.metrics.features import default_inception


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="run the whole pipeline end to end (adapt, generate, export, score)",
                              description="Adapts the emoji base shipped in the package to three 10-shot emoji "
                                          "tasks one after another, renders a comparison grid, exports a task to "
                                          "ONNX and prints what each task stores, its time and (with the Inception "
                                          "file and the full sets) KID/FID against the unadapted base.")
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--base", default="emoji32",
                   help="base checkpoint folder, or the name of a shipped base (default emoji32)")
    p.add_argument("--procedural", action="store_true",
                   help="instead: draw procedural shapes and pretrain a tiny 16 px base first (a smoke run)")
    p.add_argument("--real", default=None,
                   help="a data root of `colorgan data emoji --size 32` (each task's full set) for KID/FID against "
                        "the unadapted base (default $COLORGAN_EMOJI_DATA, else ./data/emoji32 if present)")
    p.add_argument("--inception", default=None, help="TorchScript Inception FID network (default "
                                                     "$COLORGAN_INCEPTION, else ~/.cache/colorgan/inception-fid.pt)")
    p.add_argument("--n-eval", type=int, default=500, help="samples per task for KID/FID (default 500)")
    p.add_argument("--pretrain-iter", type=int, default=2000, help="with --procedural: pretraining iterations")
    p.add_argument("--task-iter", type=int, default=None,
                   help="iterations per task (default 1000 on a CPU: about ten minutes; 3000 on a GPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an earlier demo output in --out")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    inception = args.inception or default_inception()
    real = args.real or default_real()
    if args.procedural:
        inception = real = None
    elif not (real and inception):
        missing = [m for m, have in (("the Inception file (--inception PATH; see `colorgan eval --help`)", inception),
                                     ("the tasks' full sets (`colorgan data emoji --size 32 --out DATA`, then "
                                      "--real DATA or COLORGAN_EMOJI_DATA=DATA)", real)) if not have]
        print(f"note: no KID/FID in this run; they need {' and '.join(missing)}")
        inception = real = None
    run_demo(args.out, base=None if args.procedural else args.base, real=real, inception=inception,
             n_eval=args.n_eval, pretrain_iter=args.pretrain_iter, task_iter=args.task_iter, seed=args.seed,
             overwrite=args.overwrite, progress=not args.no_progress)
    return 0
