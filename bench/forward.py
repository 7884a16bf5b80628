"""Forward-only layer benchmark: an alias of `python -m bench layers --mode forward`.

    python -m bench.forward [layers options]     (= python -m bench forward ...)

Results go to <device>-<date>-forward.{json,md,png}. The earlier method names are accepted:
fused → ours, grouped → published, merged_conv → merged.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional, Sequence

from bench import layers

OLD_NAMES = {"fused": "ours", "grouped": "published", "merged_conv": "merged"}


def translate(argv: Sequence[str]) -> List[str]:
    """The equivalent `bench layers` arguments (forward mode, kind "forward", old method names mapped)."""
    out: List[str] = []
    it = iter(argv)
    for a in it:
        if a == "--methods" or a.startswith("--methods="):
            val = a.split("=", 1)[1] if "=" in a else next(it, "")
            a = "--methods=" + ",".join(OLD_NAMES.get(m, m) for m in val.split(","))
        out.append(a)
    if not any(a == "--mode" or a.startswith("--mode=") for a in out):
        out.append("--mode=forward")
    if not any(a == "--kind" or a.startswith("--kind=") for a in out):
        out.append("--kind=forward")
    return out


def build_parser() -> argparse.ArgumentParser:
    """The layer benchmark's options (this alias only fixes the mode and maps old method names)."""
    return layers.build_parser()


def main(argv: Optional[Sequence[str]] = None) -> dict:
    return layers.main(translate(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
