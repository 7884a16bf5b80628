"""`colorgan convert`: rosinality `.pt` checkpoints and published adapter files → checkpoint folders;
`pack`: a base checkpoint → a small fp16 copy for distribution."""
from __future__ import annotations

import argparse

import torch

from colorgan.checkpoint import pack_checkpoint, read_checkpoint_config
from colorgan.convert import convert_adapters, convert_rosinality
from fastlora.deltas import ACTS


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `convert` command (subcommands `rosinality` and `adapters`)."""
    p = subparsers.add_parser("convert", help="convert rosinality / CoLoR-GAN / LFS-GAN checkpoints",
                              description="Convert published checkpoints into colorgan checkpoint folders. "
                                          ".pt files are read with torch.load(weights_only=True).")
    sub = p.add_subparsers(dest="source", metavar="SOURCE", required=True)

    r = sub.add_parser("rosinality", help="a rosinality StyleGAN2 .pt (keys g, g_ema, d, latent_avg)",
                       description="The architecture is read from the tensor shapes; only lr_mlp cannot be.")
    r.add_argument("src", help="the .pt file")
    r.add_argument("--out", required=True, help="checkpoint folder to write")
    r.add_argument("--base", choices=("g_ema", "g"), default="g_ema",
                   help="generator that becomes the model (default g_ema; use g for published CoLoR-GAN/LFS-GAN "
                        "adapters, which were trained on g)")
    r.add_argument("--lr-mlp", type=float, default=0.01, help="mapping learning-rate multiplier (default 0.01)")
    r.add_argument("--no-d", action="store_true", help="leave the discriminator out")
    r.add_argument("--with-g", action="store_true", help="also store the training generator g (for resuming)")
    _common(r)
    r.set_defaults(func=run_rosinality)

    a = sub.add_parser("adapters", help="a published CoLoR-GAN / LFS-GAN adapter .pt → one task of a checkpoint",
                       description="Adapter hyperparameters are not stored in the published files: give the ones "
                                   "used for training (published defaults: --use_act, alpha_conv 0.1, alpha_fc 4).")
    a.add_argument("src", help="the adapter .pt file")
    a.add_argument("--ckpt", required=True, help="checkpoint folder holding the base the adapters were trained on")
    a.add_argument("--task", required=True, help="name of the new task")
    a.add_argument("--format", dest="fmt", choices=("auto", "colorgan", "lfs"), default="auto",
                   help="adapter layout (default: detected from the tensor names)")
    a.add_argument("--act", choices=ACTS, default=None,
                   help="activation: CoLoR-GAN --use_act → both (default), without it → none; LFS-GAN "
                        "left_use_act → inner (default), without it → none")
    a.add_argument("--alpha-conv", "--lora-alpha-conv", "--lora_alpha_conv", "--lora-alpha", "--lora_alpha",
                   dest="alpha_conv", type=float, default=0.1, help="conv alpha (default 0.1)")
    a.add_argument("--alpha-linear", "--lora-alpha-fc", "--lora_alpha_fc", dest="alpha_linear", type=float,
                   default=4.0, help="linear alpha (default 4)")
    a.add_argument("--compat", choices=("default", "upstream"), default="default",
                   help="default: corrected alpha routing (the style LoRA is rescaled so outputs are unchanged); "
                        "upstream: the published routing, tensors copied as they are")
    _common(a)
    a.set_defaults(func=run_adapters)

    k = sub.add_parser("pack", help="a base checkpoint → a small copy for distribution (g_ema + d in fp16)",
                       description="Keeps the EMA generator and the discriminator, drops the training generator "
                                   "and tasks, and stores the weights in --dtype (this is how the shipped emoji32 "
                                   "base was made).")
    k.add_argument("src", help="checkpoint folder (e.g. RUN/checkpoint of `colorgan pretrain`)")
    k.add_argument("--out", required=True, help="checkpoint folder to write")
    k.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default="float16",
                   help="storage dtype (default float16; loads cast back to float32)")
    k.add_argument("--overwrite", action="store_true", help="replace an existing output")
    k.set_defaults(func=run_pack)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow full unpickling when weights_only loading fails (can execute code: trusted files only)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")


def run_rosinality(args: argparse.Namespace) -> int:
    out = convert_rosinality(args.src, args.out, base=args.base, lr_mlp=args.lr_mlp, with_d=not args.no_d,
                             with_g=args.with_g, trust_pickle=args.trust_pickle, overwrite=args.overwrite)
    cfg = read_checkpoint_config(out)
    g = cfg["generator"]
    print(f"wrote {out}: generator {g['size']} px, style_dim {g['style_dim']}, n_mlp {g['n_mlp']}, "
          f"{cfg['base']['generator_params']:,} parameters; modules {', '.join(cfg['base']['modules'])}; "
          f"w_avg from {cfg['source'].get('w_avg')}")
    return 0


def run_adapters(args: argparse.Namespace) -> int:
    out = convert_adapters(args.src, args.ckpt, args.task, fmt=args.fmt, act=args.act, alpha_conv=args.alpha_conv,
                           alpha_linear=args.alpha_linear, compat=args.compat, trust_pickle=args.trust_pickle,
                           overwrite=args.overwrite)
    print(f"wrote task {args.task!r} to {out}")
    return 0


def run_pack(args: argparse.Namespace) -> int:
    out = pack_checkpoint(args.src, args.out, dtype=getattr(torch, args.dtype), overwrite=args.overwrite)
    cfg = read_checkpoint_config(out)
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    print(f"wrote {out}: modules {', '.join(cfg['base']['modules'])} in {args.dtype}, {size / 1e6:.1f} MB")
    return 0
