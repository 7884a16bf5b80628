"""`colorgan pretrain`: train a base StyleGAN2 from scratch on an image folder."""
from __future__ import annotations

import argparse
import os

from colorgan.train.augment import DEFAULT_POLICY


def parse_channels(text: str | None) -> dict[int, int] | None:
    """"4:64,8:64,16:32" → {4: 64, 8: 64, 16: 32}."""
    if text is None:
        return None
    try:
        return {int(k): int(v) for k, v in (p.split(":") for p in text.split(",") if p.strip())}
    except ValueError:
        raise ValueError(f"--channels must look like 4:64,8:64,16:32 (resolution:channels), got {text!r}") from None


def add_run_options(p: argparse.ArgumentParser) -> None:
    """Options shared by pretrain and train that do not change the results' definition."""
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder given as --out")
    p.add_argument("--device", default="auto", help="auto (CUDA if available; torchrun: the local GPU), cpu, cuda")
    p.add_argument("--amp", default="auto", choices=("auto", "off", "bf16"),
                   help="mixed precision for the main loss passes: auto = bf16 on CUDA, off on CPU (default auto)")
    p.add_argument("--stop-at", type=int, default=None, metavar="STEP",
                   help="stop after this many (global) iterations, writing the state, e.g. to split a run into "
                        "jobs; continue with --resume")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `pretrain` command."""
    p = subparsers.add_parser(
        "pretrain", help="train a base StyleGAN2 from scratch on an image folder",
        description=("rosinality StyleGAN2 recipe: non-saturating loss, R1 every --d-reg-every, path length every "
                     "--g-reg-every, style mixing, EMA generator, differentiable augmentation for small sets. "
                     "Writes RUN/config.json, log.jsonl, train.log, samples/, checkpoint/ (colorgan format) and "
                     "state/ (for --resume). Multi-GPU: torchrun --nproc_per_node N -m colorgan pretrain ..."))
    p.add_argument("--data", help="image folder (the source domain)")
    p.add_argument("--size", type=int, help="image size (power of two)")
    p.add_argument("--out", help="run folder to create")
    p.add_argument("--resume", metavar="RUN", help="continue the run in folder RUN (all other settings come from it)")
    p.add_argument("--iter", type=int, default=20000, help="iterations (default 20000)")
    p.add_argument("--batch", type=int, default=16, help="batch per process (default 16)")
    p.add_argument("--lr", type=float, default=0.002)
    p.add_argument("--style-dim", type=int, default=512)
    p.add_argument("--n-mlp", type=int, default=8)
    p.add_argument("--channel-multiplier", type=int, default=2)
    p.add_argument("--channels", default=None, help="explicit channel table, e.g. 4:128,8:128,16:64,32:32")
    p.add_argument("--r1", type=float, default=10.0)
    p.add_argument("--path-regularize", type=float, default=2.0)
    p.add_argument("--path-batch-shrink", type=int, default=2)
    p.add_argument("--d-reg-every", type=int, default=16)
    p.add_argument("--g-reg-every", type=int, default=4)
    p.add_argument("--mixing", type=float, default=0.9)
    p.add_argument("--augment", default="auto", choices=("auto", "on", "off"),
                   help="differentiable augmentation of D's inputs; auto = on for sets of ≤ 5000 images")
    p.add_argument("--augment-policy", default=DEFAULT_POLICY)
    p.add_argument("--ema-kimg", type=float, default=10.0, help="EMA half-life in thousands of images (default 10)")
    p.add_argument("--n-sample", type=int, default=16, help="fixed latents in the sample grids")
    p.add_argument("--sample-every", type=int, default=1000)
    p.add_argument("--save-every", type=int, default=5000, help="checkpoint + state every N iterations")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default="auto", choices=("auto", "torch", "triton"))
    add_run_options(p)
    p.set_defaults(func=run)


FIELDS = ("iter", "batch", "lr", "style_dim", "n_mlp", "channel_multiplier", "r1", "path_regularize",
          "path_batch_shrink", "d_reg_every", "g_reg_every", "mixing", "augment", "augment_policy", "ema_kimg",
          "n_sample", "sample_every", "save_every", "log_every", "seed", "backend")


def start_or_resume(args: argparse.Namespace, fn, required: tuple[str, ...], make_config) -> dict | None:
    """Run `fn` (pretrain or train) as a new run or with --resume; None on ranks other than 0."""
    from colorgan.train.loop import RunOptions

    options = RunOptions(device=args.device, amp=args.amp, progress=not args.no_progress, stop_at=args.stop_at)
    if args.resume:
        if args.out and args.out != args.resume:
            raise ValueError("give either --resume RUN or --out RUN, not both")
        summary = fn(None, args.resume, options=options, resume=True)
    else:
        missing = [f for f in required if getattr(args, f) is None]
        if missing:
            raise ValueError(f"a new run needs {', '.join('--' + m for m in missing)} (or --resume RUN)")
        summary = fn(make_config(), args.out, options=options, overwrite=args.overwrite)
    return summary if os.environ.get("RANK", "0") == "0" else None


def run(args: argparse.Namespace) -> int:
    from colorgan.train.pretrain import PretrainConfig, pretrain

    summary = start_or_resume(args, pretrain, ("data", "size", "out"), lambda: PretrainConfig(
        data=args.data, size=args.size, channels=parse_channels(args.channels), **{f: getattr(args, f) for f in FIELDS}))
    if summary is not None:
        state = "finished" if summary["finished"] else "stopped"
        print(f"{state} at step {summary['step']}; checkpoint: {summary['checkpoint']}")
    return 0
