"""`colorgan onnx-generate`: render seeds from an exported ONNX file (onnxruntime only)."""
from __future__ import annotations

import argparse

from export.render import render_onnx


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `onnx-generate` command."""
    p = subparsers.add_parser(
        "onnx-generate", help="render seeds with an exported ONNX generator (no PyTorch model)",
        description=("Seeds map to the same z as `colorgan generate`; files are OUTDIR/<task>/seedNNNN.png and, "
                     "with --grid, OUTDIR/grid.png. The file must have been exported with --input z."))
    p.add_argument("--onnx", required=True, help="file written by `colorgan export`")
    p.add_argument("--seeds", required=True, help="seeds such as 0-15,42 (inclusive ranges)")
    p.add_argument("--outdir", required=True, help="output folder")
    p.add_argument("--grid", action="store_true", help="also write OUTDIR/grid.png (one row)")
    p.add_argument("--trunc", type=float, default=1.0, help="truncation psi (needs a file exported with --psi)")
    p.add_argument("--noise", default="random", choices=("random", "zero"),
                   help="for files with noise inputs: per-seed noise as `colorgan generate --noise random` "
                        "(default) or zeros; files with baked noise ignore this")
    p.add_argument("--batch", type=int, default=16, help="images per run (default 16)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="onnxruntime provider (default cpu)")
    p.add_argument("--overwrite", action="store_true", help="replace existing images")
    p.set_defaults(func=run, cli_words={"truncation": "--trunc", "batch": "--batch"})


def run(args: argparse.Namespace) -> int:
    res = render_onnx(args.onnx, args.seeds, args.outdir, grid=args.grid, batch=args.batch, trunc=args.trunc,
                      noise=args.noise, device=args.device, overwrite=args.overwrite)
    print(f"wrote {len(res['files'])} images of task {res['task']!r} to {args.outdir} "
          f"(onnxruntime providers: {', '.join(res['providers'])})")
    if "grid" in res:
        print(f"grid: {res['grid']}")
    return 0
