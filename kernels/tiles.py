"""Tile configurations of the fused kernels: a small fixed table per kernel family,
a per-shape heuristic, an optional autotuner with an in-process (and optional on-disk)
cache, and a way to force one configuration (tests exercise every entry).

Nothing here synchronises with the device except autotuning itself, which runs once
per shape key (off by default; `FASTLORA_AUTOTUNE=1` or `set_autotune(True)`); once a key
is cached, launches are free of host synchronisation and can be captured in a CUDA graph.
Under the Triton interpreter autotuning is disabled: every launch runs exactly one config.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import threading
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, Optional, Sequence, Tuple


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@dataclass(frozen=True)
class Config:
    """One launch configuration. Fields unused by a kernel family are ignored."""

    name: str
    block_m: int = 0
    block_n: int = 0
    block_k: int = 0
    num_warps: int = 4
    num_stages: int = 2

    def launch_kwargs(self) -> dict:
        return {"num_warps": self.num_warps, "num_stages": self.num_stages}


# Forward implicit-GEMM conv (kernels/modconv.py): M = output pixels (all samples), N = C_out, K = taps × C_in
# in one loop. wgmma-sized tiles: BLOCK_M 64 per warpgroup (4 warps), 128 with 8 warps (two warpgroups).
# fp32 operands use BLOCK_K 32 (shared memory: stages × (BM + BN) × BK × 4 bytes).
CONV_CONFIGS: Tuple[Config, ...] = (
    Config("conv_64x64x64", 64, 64, 64, num_warps=4, num_stages=3),
    Config("conv_64x128x64", 64, 128, 64, num_warps=4, num_stages=3),
    Config("conv_128x128x64", 128, 128, 64, num_warps=8, num_stages=3),
    Config("conv_64x64x32", 64, 64, 32, num_warps=4, num_stages=3),
    Config("conv_128x128x32", 128, 128, 32, num_warps=8, num_stages=3),
)
# Split-K reduction tile (rows × C_out).
REDUCE_BLOCK = (32, 64)
# Backward GEMMs (wgrad, and forced configs of dgrad and the factorised path's rank-r launches): M = C_in (or
# C_out for the rank-r weight gradients), N = C_out (or the rank), K = pixels. 128x128x64 at 8 warps spills.
BWD_CONFIGS: Tuple[Config, ...] = (
    Config("conv_16x32x32", 16, 32, 32, num_warps=2, num_stages=2),
    Config("conv_32x64x32", 32, 64, 32, num_warps=4, num_stages=3),
    Config("conv_64x64x32", 64, 64, 32, num_warps=4, num_stages=3),
    Config("conv_128x64x32", 128, 64, 32, num_warps=4, num_stages=3),
    Config("conv_128x128x32_k1", 128, 128, 32, num_warps=8, num_stages=3),
    Config("wgrad_64x64x64", 64, 64, 64, num_warps=4, num_stages=3),
    Config("wgrad_128x64x64_w8", 128, 64, 64, num_warps=8, num_stages=3),
    Config("rank_64x16x64", 64, 16, 64, num_warps=4, num_stages=3),
)
# Epilogue backward: [pixels, channels] tiles of one sample.
EPI_BWD_CONFIG = Config("epi_bwd_32x64", 32, 64, num_warps=4, num_stages=1)
# Prologue (adapted weight + sums of squares): tiles of [C_out, C_in × all taps].
PROLOGUE_CONFIGS: Tuple[Config, ...] = (
    Config("pro_16x16", 16, 16, num_warps=4, num_stages=1),
    Config("pro_32x16", 32, 16, num_warps=4, num_stages=1),
)
# Reductions of the backward to adapter factors: tiles of [C_out, C_in].
REDUCE_CONFIGS: Tuple[Config, ...] = (
    Config("pro_32x32", 32, 32, num_warps=4, num_stages=1),
    Config("pro_64x64", 64, 64, num_warps=4, num_stages=1),
)
# FIR blur (+ epilogue): [pixels, channels] tiles.
FIR_CONFIGS: Tuple[Config, ...] = (
    Config("fir_16x128", 16, 128, num_warps=4, num_stages=1),
    Config("fir_64x64", 64, 64, num_warps=4, num_stages=1),
)
# Linear + low-rank: [rows, d_out] tiles, K = d_in.
LINEAR_CONFIGS: Tuple[Config, ...] = (
    Config("lin_16x32x64", 16, 32, 64, num_warps=4, num_stages=2),
    Config("lin_32x64x64", 32, 64, 64, num_warps=4, num_stages=3),
    Config("lin_64x128x32", 64, 128, 32, num_warps=4, num_stages=3),
)

TABLES: Dict[str, Tuple[Config, ...]] = {
    "conv": CONV_CONFIGS, "prologue": PROLOGUE_CONFIGS, "fir": FIR_CONFIGS, "linear": LINEAR_CONFIGS,
    # backward families (forced separately: force(dgrad=..., wgrad=..., reduce=...))
    "dgrad": BWD_CONFIGS, "wgrad": BWD_CONFIGS, "reduce": REDUCE_CONFIGS, "linear_bwd": LINEAR_CONFIGS,
    # the rank-r launches of the factorised weight gradient (projections, rank-r wgrad/dgrad): force(factor=...)
    "factor": BWD_CONFIGS,
}

# How often each backward reduction strategy ran ("..._partials": deterministic two-stage reduction,
# "..._atomic": atomics) and which weight-gradient path ran ("wgrad_full": the full kernel gradient G was
# written; "wgrad_factorised": rank-r reductions only). Tests read it to check which path was taken.
COUNTERS: Dict[str, int] = {}

WGRAD_PATHS = ("auto", "full", "factorised")

_state = threading.local()
_cache: Dict[tuple, str] = {}
_autotune = os.environ.get("FASTLORA_AUTOTUNE", "0") not in ("", "0")
_cache_file = os.environ.get("FASTLORA_TUNE_CACHE")
_cache_loaded = False


def get(family: str, name: str) -> Config:
    for c in TABLES[family]:
        if c.name == name:
            return c
    raise ValueError(f"no {family} config named {name!r}; known: {[c.name for c in TABLES[family]]}")


@contextlib.contextmanager
def force(**names: Optional[str]) -> Iterator[None]:
    """Force configs by family for launches inside the block, e.g. `force(conv="conv_16x32x32")`."""
    for fam, name in names.items():
        if name is not None:
            get(fam, name)
    old = dict(getattr(_state, "forced", {}))
    _state.forced = {**old, **{k: v for k, v in names.items() if v is not None}}
    try:
        yield
    finally:
        _state.forced = old


@contextlib.contextmanager
def split_k(n: Optional[int]) -> Iterator[None]:
    """Force the forward conv's split-K factor inside the block (None: the heuristic's)."""
    if n is not None and n < 1:
        raise ValueError(f"split-K factor must be >= 1, got {n}")
    old = getattr(_state, "split", None)
    _state.split = n
    try:
        yield
    finally:
        _state.split = old


def forced_split() -> Optional[int]:
    return getattr(_state, "split", None)


def forced(family: str) -> Optional[Config]:
    name = getattr(_state, "forced", {}).get(family)
    return None if name is None else get(family, name)


@contextlib.contextmanager
def wgrad_path(path: str) -> Iterator[None]:
    """Force the conv weight-gradient path inside the block: "full" (always the full kernel gradient G),
    "factorised" (rank-r reductions; ValueError where not applicable) or "auto" (factorised when the base
    weight is frozen and every adapter that trains is low-rank, else full). Overrides env FASTLORA_WGRAD."""
    if path not in WGRAD_PATHS:
        raise ValueError(f"wgrad path must be one of {WGRAD_PATHS}, got {path!r}")
    old = getattr(_state, "wgrad_path", None)
    _state.wgrad_path = path
    try:
        yield
    finally:
        _state.wgrad_path = old


def wgrad_path_choice() -> str:
    """The requested weight-gradient path: `wgrad_path(...)`, else env FASTLORA_WGRAD (read per call), else auto."""
    path = getattr(_state, "wgrad_path", None) or os.environ.get("FASTLORA_WGRAD", "") or "auto"
    if path not in WGRAD_PATHS:
        raise ValueError(f"FASTLORA_WGRAD must be one of {WGRAD_PATHS}, got {path!r}")
    return path


def set_autotune(on: bool) -> None:
    """Turn GPU autotuning on/off (each new shape key is benchmarked once, then cached)."""
    global _autotune
    _autotune = bool(on)


def cache() -> Dict[tuple, str]:
    """The autotune cache: shape key -> config name."""
    return _cache


def _load_cache() -> None:
    global _cache_loaded
    if _cache_loaded or not _cache_file or not os.path.exists(_cache_file):
        _cache_loaded = True
        return
    with open(_cache_file) as f:
        for rec in json.load(f):
            _cache[tuple(rec["key"])] = rec["config"]
    _cache_loaded = True


def _save_cache() -> None:
    if not _cache_file:
        return
    recs = [{"key": list(k), "config": v} for k, v in _cache.items()]
    tmp = _cache_file + ".tmp"
    with open(tmp, "w") as f:
        json.dump(recs, f)
    os.replace(tmp, _cache_file)


def _recording() -> bool:
    from kernels import common

    return common.recording() is not None


def num_sms(device) -> int:
    """Multiprocessors of `device` (the recorder's count inside `common.record`, 1 off the GPU)."""
    from kernels import common

    rec = common.recording()
    if rec is not None:
        return rec.sms
    if interpreting() or getattr(device, "type", "cpu") != "cuda":
        return 1
    return _sm_count(device.index if device.index is not None else -1)


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    import torch

    dev = torch.cuda.current_device() if index < 0 else index
    return torch.cuda.get_device_properties(dev).multi_processor_count


def _next_pow2(v: int) -> int:
    return 1 << max(0, int(v - 1).bit_length())


def choose(family: str, key: tuple, eligible: Sequence[Config], grid_size: Callable[[Config], int],
           m_extent: int, n_extent: int, device, bench: Optional[Callable[[Config], None]] = None) -> Config:
    """Pick a config: forced > autotune cache > (autotune) > heuristic.

    Heuristic on GPU: the largest tile that still gives at least one program per SM (small
    layers at small batch get small tiles), never a tile much larger than the problem.
    Under the interpreter: the largest tile (fewest sequential programs).
    """
    f = forced(family)
    if f is not None:
        return f
    full_key = (family,) + tuple(key)
    if _autotune and not interpreting() and bench is not None:
        _load_cache()
        name = _cache.get(full_key)
        if name is None:
            name = _tune(eligible, bench)
            _cache[full_key] = name
            _save_cache()
        return get(family, name)
    if interpreting():  # programs run one after another: fewest programs is fastest
        return max(eligible, key=lambda c: (c.block_m * max(c.block_n, 1), -c.num_warps))
    target = num_sms(device)
    fits = [c for c in eligible if c.block_m <= max(16, _next_pow2(m_extent))
            and (c.block_n == 0 or c.block_n <= max(64, _next_pow2(n_extent)))] or [eligible[0]]
    fits = sorted(fits, key=lambda c: (c.block_m * max(c.block_n, 1), c.num_warps))
    for c in reversed(fits):
        if grid_size(c) >= target:
            return c
    return fits[0]


# ----------------------------------------------------------------------------- the forward conv's tile and split

# An H100/H200 SM: ~7.5 TFLOP/s of dense bf16 MMA (989 / 132), ~3 TB/s of HBM for the whole chip.
_SM_FLOPS = 7.5e12
_HBM = 3.0e12
_LAUNCH = 1e-6  # one extra launch (the split-K reduction) inside a CUDA graph
_SMEM = 200 * 1024  # usable shared memory per CTA we allow a config


@dataclass(frozen=True)
class ConvProblem:
    """The GEMM shape of one conv launch: `rows` (M per z-slice), `n` (C_out), the K-step count for a given
    BLOCK_K, `z` independent slices (polyphase phases × per-sample groups) and the operand element size."""

    rows: int
    n: int
    k_steps_of: Callable[[int], int]
    z: int
    elsize: int


def conv_smem(c: Config, elsize: int) -> int:
    return c.num_stages * (c.block_m + c.block_n) * c.block_k * elsize


def _tile_efficiency(c: Config) -> float:
    """Relative MMA throughput of a tile: its arithmetic intensity BM·BN/(BM+BN), 1 at 128×128."""
    return min(1.0, (c.block_m * c.block_n / (c.block_m + c.block_n)) / 64.0)


def conv_time(c: Config, split: int, p: ConvProblem, sms: int) -> float:
    """A wave model of one conv launch (seconds): ceil(CTAs / SMs) waves of (K steps per split + pipeline
    fill) tile steps, plus the split-K reduction (write and read of the fp32 partials, one launch)."""
    steps = p.k_steps_of(c.block_k)
    sps = -(-steps // split)
    split = -(-steps // sps)
    ctas = -(-p.rows // c.block_m) * -(-p.n // c.block_n) * p.z * split
    waves = -(-ctas // sms)
    step = 2.0 * c.block_m * c.block_n * c.block_k / (_SM_FLOPS * _tile_efficiency(c))
    t = waves * (sps + c.num_stages) * step
    if split > 1:
        t += 2.0 * split * p.rows * p.z * p.n * 4 / _HBM + _LAUNCH
    return t


def conv_eligible(elsize: int) -> list:
    """Forward conv configs whose pipeline fits in shared memory for this operand size (BLOCK_K 64 for 16-bit
    operands, 32 for fp32)."""
    want_k = 64 if elsize <= 2 else 32
    return [c for c in CONV_CONFIGS if c.block_k == want_k and conv_smem(c, elsize) <= _SMEM]


def choose_conv(family: str, p: ConvProblem, device, config: Optional[Config] = None, split: Optional[int] = None,
                key: tuple = (), bench: Optional[Callable[[Config, int], None]] = None) -> Tuple[Config, int]:
    """(config, split-K factor) of a forward conv launch: forced (or given) > autotune cache > (autotune) >
    heuristic. The heuristic minimises `conv_time` over the eligible tiles and splits (1..32) on the device's
    SM count (the interpreter: the largest tile that fits the problem, no split: programs run one after
    another). Autotuning benchmarks the heuristic's four best candidates once per shape key."""
    split = split or forced_split()
    f = config or forced(family)
    if f is not None:
        return f, split or 1
    eligible = conv_eligible(p.elsize)
    if interpreting() and not _recording():
        fits = [c for c in eligible if c.block_m <= max(64, _next_pow2(p.rows))
                and c.block_n <= max(64, _next_pow2(p.n))] or eligible[:1]
        return max(fits, key=lambda c: (c.block_m * c.block_n, -c.num_warps)), split or 1
    steps_by_k = tuple(sorted({(c.block_k, p.k_steps_of(c.block_k)) for c in eligible}))
    ranked = _ranked_convs(p.rows, p.n, p.z, p.elsize, steps_by_k, num_sms(device), split)
    if _autotune and bench is not None and not _recording():
        _load_cache()
        full_key = (family,) + tuple(key)
        name = _cache.get(full_key)
        if name is None:
            cands = list(ranked[:4])
            pick = _tune([Config(f"{c.name}@{s}") for c, s in cands],
                         lambda cf: bench(*cands[[f"{c.name}@{s}" for c, s in cands].index(cf.name)]))
            _cache[full_key] = name = pick
            _save_cache()
        cname, s = name.rsplit("@", 1)
        return get(family, cname), int(s)
    return ranked[0]


@functools.lru_cache(maxsize=4096)
def _ranked_convs(rows: int, n: int, z: int, elsize: int, steps_by_k: tuple, sms: int,
                  split: Optional[int]) -> Tuple[Tuple[Config, int], ...]:
    """Every eligible (config, split) of a conv problem, best first by `conv_time` (ties: table order). A pure
    function of the shape, so it is computed once per shape: the launch path stays cheap on the host."""
    steps_of = dict(steps_by_k)
    p = ConvProblem(rows, n, steps_of.__getitem__, z, elsize)
    ranked = []
    for c in conv_eligible(elsize):
        steps = steps_of[c.block_k]
        for s in ([split] if split else range(1, min(32, steps) + 1)):
            ranked.append((conv_time(c, s, p, sms), len(ranked), c, s))
    ranked.sort(key=lambda v: v[:2])
    return tuple((c, s) for _, _, c, s in ranked)


def _tune(eligible: Sequence[Config], bench: Callable[[Config], None]) -> str:
    from triton.testing import do_bench

    best, best_t = eligible[0].name, float("inf")
    for c in eligible:
        try:
            t = do_bench(lambda: bench(c), warmup=5, rep=20)
        except Exception:  # a config that does not compile on this device is skipped
            continue
        if t < best_t:
            best, best_t = c.name, t
    return best


# ----------------------------------------------------------------------------- output poisoning (tests)

_poison = os.environ.get("FASTLORA_POISON", "0") not in ("", "0")


@contextlib.contextmanager
def poison(on: bool = True) -> Iterator[None]:
    """Fill every buffer the launchers allocate (outputs and intermediates) with NaN before the
    kernels run, so an element a kernel fails to write cannot pass a comparison."""
    global _poison
    old, _poison = _poison, on
    try:
        yield
    finally:
        _poison = old


def empty(shape, *, device, dtype):
    """torch.empty, NaN-filled while poisoning is on."""
    import torch

    t = torch.empty(shape, device=device, dtype=dtype)
    if _poison:
        t.fill_(float("nan"))
    return t
