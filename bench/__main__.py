"""python -m bench {layers,e2e,onnx,forward,quality} [options]

  layers   per-layer benchmark over the SPEC §6 matrix (bench/layers.py)
  e2e      one CoLoR-GAN training iteration and generation images/s (bench/e2e.py)
  onnx     images/s of an exported task in onnxruntime vs PyTorch (bench/onnx.py)
  forward  alias of `layers --mode forward` (the earlier forward-only benchmark)
  quality  FID/KID of the emoji demo tasks per adapter configuration against the base, and forgetting
  compile  static compile report: every fused kernel compiled for sm_90a, SASS statistics (bench/compile.py)

`python -m bench SUBCOMMAND --help` lists each one's options.
"""
from __future__ import annotations

import sys
from typing import Optional, Sequence

SUBCOMMANDS = ("layers", "e2e", "onnx", "forward", "quality", "compile")


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        print(__doc__.strip())
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nunknown subcommand {argv[0]!r}; choose one of {', '.join(SUBCOMMANDS)}", file=sys.stderr)
            return 2
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "layers":
        from bench import layers

        layers.main(rest)
        return 0
    if cmd == "e2e":
        from bench import e2e

        e2e.main(rest)
        return 0
    if cmd == "quality":
        from bench import quality

        return quality.main(rest)
    if cmd == "compile":
        from bench import compile as bcompile

        return bcompile.main(rest)
    if cmd == "forward":
        from bench import forward

        forward.main(rest)
        return 0
    from bench import onnx

    return onnx.main(rest)


if __name__ == "__main__":
    sys.exit(main())
