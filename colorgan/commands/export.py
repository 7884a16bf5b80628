"""`colorgan export`: one ONNX generator per task, the task's adapters merged into the base weights."""
from __future__ import annotations

import argparse

from colorgan.commands._strength import add_strength_option, strength_overrides
from export.api import export_checkpoint


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `export` command."""
    p = subparsers.add_parser(
        "export", help="export tasks of a checkpoint as plain ONNX generators (adapters merged)",
        description=("Merges each task's adapters into the base (in fp32, then cast) and writes a plain StyleGAN2 "
                     "generator: constant weights, shared-weight modulated convs, no random ops, dynamic batch. "
                     "Each file is checked with onnx.checker and compared with the PyTorch generator in "
                     "onnxruntime before it is moved into place; a failed export leaves no file."))
    p.add_argument("--ckpt", required=True, help="checkpoint folder")
    p.add_argument("--task", required=True,
                   help="NAME, 'base' (the unadapted model), 'all' (one file per task) or NAME,NAME,...")
    p.add_argument("--out", required=True,
                   help="output file for one task (or a folder: OUT/<task>.onnx); a folder for several tasks")
    p.add_argument("--input", default="z", choices=("z", "w", "wplus"),
                   help="graph input: z [N, style_dim] (mapping included, default), w [N, style_dim] or "
                        "wplus [N, n_latent, style_dim]")
    p.add_argument("--psi", action="store_true",
                   help="add a truncation input 'psi' [1] (toward the task's w_avg, baked into the file)")
    p.add_argument("--noise", default="const", choices=("const", "input"),
                   help="const: the checkpoint's stored noise maps baked in (default); input: inputs noise_0.. "
                        "[N or 1, 1, res, res]")
    p.add_argument("--fp16", action="store_true", help="fp16 weights and arithmetic (inputs/output stay float32)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                   help="onnxruntime provider for the parity check (cuda fails if onnxruntime falls back to CPU)")
    add_strength_option(p)
    p.add_argument("--overwrite", action="store_true", help="replace existing files")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    results = export_checkpoint(args.ckpt, args.task, args.out, input=args.input, psi=args.psi, noise=args.noise,
                                dtype="fp16" if args.fp16 else "fp32", opset=args.opset, device=args.device,
                                overwrite=args.overwrite, log=print,
                                strengths=strength_overrides(args.strength, args.ckpt))
    print(f"wrote {len(results)} file(s): {', '.join(r.path for r in results)}")
    return 0
