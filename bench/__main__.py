"""python -m bench SUBCOMMAND [options]: the benchmark harness (run from the checkout; not installed).

  layers        per-layer benchmark over the benchmark matrix (docs/design.md §7)
  e2e           one CoLoR-GAN training iteration and generation images/s
  onnx          images/s of an exported task in onnxruntime vs PyTorch
  forward       alias of `layers --mode forward` (the earlier forward-only benchmark)
  quality       few-shot quality on the emoji benchmark: floors, configurations, seeds, forgetting
  near          how near each task's shots lie to the base (the near check's gap), per shot seed
  roles         what each adapter role (mapping, style, conv) of a trained task contributes at sampling time
  cpu-train     CPU pretraining speed: fp32 vs bf16 autocast, channels-last, torch.compile
  compile       static sm_90a compile report of every kernel (registers, spills, MMA, load widths)
  gpu-session   every GPU measurement in one time-budgeted run, files to commit
  readme-table  the README's benchmark table from the newest committed session

`python -m bench SUBCOMMAND --help` lists each one's options.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

# subcommand -> module; each module has build_parser() and main(argv)
SUBCOMMANDS = {"layers": "bench.layers", "e2e": "bench.e2e", "onnx": "bench.onnx", "forward": "bench.forward",
               "quality": "bench.quality", "near": "bench.near", "roles": "bench.roles", "cpu-train": "bench.cpu_train", "compile": "bench.compile",
               "gpu-session": "bench.session", "readme-table": "bench.readme_table"}


def build_parser(subcommand: str) -> argparse.ArgumentParser:
    """The option parser of one subcommand (what its `--help` shows)."""
    return importlib.import_module(SUBCOMMANDS[subcommand]).build_parser()


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        print(__doc__.strip())
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nunknown subcommand {argv[0]!r}; choose one of {', '.join(SUBCOMMANDS)}", file=sys.stderr)
            return 2
        return 0
    try:
        result = importlib.import_module(SUBCOMMANDS[argv[0]]).main(argv[1:])
    except OSError as exc:  # a missing data set or checkpoint, an unreadable file: one line, no traceback
        raise SystemExit(f"bench {argv[0]}: {exc}") from None
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
