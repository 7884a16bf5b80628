"""`colorgan generate`: images of fixed seeds for one or more tasks of a checkpoint."""
from __future__ import annotations

import argparse

from colorgan.commands._strength import add_strength_option, strength_overrides
from colorgan.generate import generate
from colorgan.generator import NOISE_MODES
from fastlora.backend import BACKEND_HELP, BACKENDS


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `generate` command."""
    p = subparsers.add_parser(
        "generate", help="generate images of fixed seeds for tasks of a checkpoint",
        description=("Each seed maps to one fixed z (the same for every task and the base); files are "
                     "OUTDIR/<task>/seedNNNN.png, and --grid adds OUTDIR/grid.png (a row per task, a column per seed)."))
    p.add_argument("--ckpt", required=True, help="checkpoint folder (see `colorgan convert`)")
    p.add_argument("--task", default="all",
                   help="NAME[,NAME...], 'all' (every task) or 'base' (the unadapted model); mixes such as "
                        "'base,all' are allowed (default: all)")
    p.add_argument("--seeds", required=True, help="seeds such as 0-99,123 (inclusive ranges)")
    p.add_argument("--trunc", type=float, default=1.0,
                   help="truncation psi toward w_avg (1 = none; default 1). Tasks use the stored w_avg shifted "
                        "by their mapping adapters' mean change")
    p.add_argument("--batch", type=int, default=32, help="images per forward pass (default 32)")
    p.add_argument("--outdir", required=True, help="output folder")
    p.add_argument("--grid", action="store_true", help="also write OUTDIR/grid.png")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--backend", default="auto", choices=BACKENDS,
                   help=f"{BACKEND_HELP} (default auto)")
    p.add_argument("--noise", default="const", choices=NOISE_MODES,
                   help="const: the stored per-layer noise; random: per-seed noise; none (default const)")
    p.add_argument("--cuda-graph", action="store_true",
                   help="capture each task's forward once as a CUDA graph at --batch and replay it (needs --device "
                        "cuda; fewer launch gaps for the small layers)")
    add_strength_option(p)
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run, cli_words=CLI_WORDS)


# the library's parameter names as this command spells them (for error messages)
CLI_WORDS = {"truncation": "--trunc", "batch": "--batch", "device": "--device", "noise_mode": "--noise",
             "tasks": "--task", "'all'": "--task all", "cuda_graph": "--cuda-graph"}


def run(args: argparse.Namespace) -> int:
    result = generate(args.ckpt, args.task, args.seeds, args.outdir, truncation=args.trunc, batch=args.batch,
                      grid=args.grid, device=args.device, noise_mode=args.noise, backend=args.backend,
                      overwrite=args.overwrite, progress=not args.no_progress, cuda_graph=args.cuda_graph,
                      strengths=strength_overrides(args.strength, args.ckpt))
    at = result["strengths"]
    names = ", ".join(t + (f" at strength {at[t]:g}" if t in at else "") for t in result["tasks"])
    print(f"wrote {len(result['files'])} images for {len(result['tasks'])} task(s) ({names}) to {args.outdir}")
    if "grid" in result:
        print(f"grid: {result['grid']} (rows: {', '.join(result['tasks'])})")
    return 0
