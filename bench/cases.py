"""The layer ladder of the benchmark matrix (docs/design.md §7): StyleGAN2 modulated convs by name.

A `Case` is one modulated conv: channels, output resolution, kernel, resampling and
demodulation. `ladder("256")` is the StyleGAN2-256 generator (13 styled 3×3 convs and the
1×1 ToRGBs, one entry per distinct shape), `ladder("1024")` adds the 512/1024-px layers of a
1024-px model, `ladder("quick")` is a tiny stand-in for CPU test runs.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence


@dataclass(frozen=True)
class Case:
    """One modulated conv layer. `res` is the output resolution; `up` upsamples ×2
    (stride-2 transposed conv + FIR blur), `down` blurs then convolves with stride 2."""

    name: str
    c_in: int
    c_out: int
    res: int
    k: int = 3
    up: bool = False
    down: bool = False
    demod: bool = True

    @property
    def in_res(self) -> int:
        if self.up:
            return self.res // 2
        if self.down:
            return self.res * 2
        return self.res

    @property
    def torgb(self) -> bool:
        return not self.demod

    def flops(self, batch: int) -> float:
        """Multiply-adds ×2 of the base conv only (no adapter, modulation, blur or epilogue).

        Plain and down: 2·N·OH·OW·C_out·C_in·k². Up: the transposed conv does k² MACs per
        input pixel and channel pair (the polyphase split does the same work), so N·H_in·W_in
        replaces N·OH·OW."""
        pix = self.in_res ** 2 if self.up else self.res ** 2
        return 2.0 * batch * pix * self.c_out * self.c_in * self.k ** 2

    def bytes(self, batch: int, elsize: int) -> float:
        """The fewest bytes the layer must move: x read once, y written once, the base weight read once."""
        x = batch * self.c_in * self.in_res ** 2
        y = batch * self.c_out * self.res ** 2
        w = self.c_out * self.c_in * self.k ** 2
        return float((x + y + w) * elsize)

    def to_dict(self) -> dict:
        return asdict(self)


def _ladder_256() -> List[Case]:
    cases = [Case("conv512@4", 512, 512, 4)]
    for res in (8, 16, 32, 64):
        cases += [Case(f"up512@{res}", 512, 512, res, up=True), Case(f"conv512@{res}", 512, 512, res)]
    cases += [Case("up256@128", 512, 256, 128, up=True), Case("conv256@128", 256, 256, 128),
              Case("up128@256", 256, 128, 256, up=True), Case("conv128@256", 128, 128, 256)]
    cases += [Case("torgb512@4", 512, 3, 4, k=1, demod=False), Case("torgb512@32", 512, 3, 32, k=1, demod=False),
              Case("torgb256@128", 256, 3, 128, k=1, demod=False),
              Case("torgb128@256", 128, 3, 256, k=1, demod=False)]
    return cases


def _ladder_1024_extra() -> List[Case]:
    return [Case("up64@512", 128, 64, 512, up=True), Case("conv64@512", 64, 64, 512),
            Case("up32@1024", 64, 32, 1024, up=True), Case("conv32@1024", 32, 32, 1024),
            Case("torgb64@512", 64, 3, 512, k=1, demod=False), Case("torgb32@1024", 32, 3, 1024, k=1, demod=False)]


def _ladder_quick() -> List[Case]:
    """Tiny shapes for CPU runs and tests: one plain, one up, one ToRGB."""
    return [Case("conv16@4", 16, 16, 4), Case("up16@8", 16, 16, 8, up=True),
            Case("torgb16@8", 16, 3, 8, k=1, demod=False)]


LADDERS = {"256": _ladder_256, "1024": lambda: _ladder_256() + _ladder_1024_extra(),
           "1024-extra": _ladder_1024_extra, "quick": _ladder_quick}


def ladder(name: str = "256", only: Optional[Sequence[str]] = None) -> List[Case]:
    """The cases of a named ladder, optionally restricted to the layer names in `only`."""
    if name not in LADDERS:
        raise ValueError(f"unknown ladder {name!r}; choose one of {sorted(LADDERS)}")
    cases = LADDERS[name]()
    if only:
        by: Dict[str, Case] = {c.name: c for c in cases}
        missing = [n for n in only if n not in by]
        if missing:
            raise ValueError(f"unknown layer(s) {missing} in ladder {name!r}; it has {list(by)}")
        cases = [by[n] for n in only]
    return cases
