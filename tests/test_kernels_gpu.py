"""GPU-only checks of the fused forward kernels (`-m gpu`; skipped without CUDA): fp32 (TF32 off),
TF32, fp16 and bf16 against the float64 reference (docs/design.md §7 thresholds), every tile config compiled
and checked at GPU-sized shapes, autotuning and its cache, and CUDA-graph capture of a launch."""
from __future__ import annotations

import contextlib
import itertools

import pytest
import torch

from fastlora import functional as FL

from tests.test_kernels_forward import KINDS, _cpu, conv_adapter, linear_adapter, rel_err, to64
from tests.test_kernels_tf32 import _to_tf32

pytestmark = pytest.mark.gpu

TOL = {"fp32": 1e-5, "tf32": 2e-3, "fp16": 5e-3, "bf16": 2e-2}
DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@contextlib.contextmanager
def tf32(on: bool):
    """TF32 for matmuls (the fused kernels follow this flag) and cuDNN convolutions (torch's), or neither."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = on
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.fixture(autouse=True)
def _poisoned():
    from kernels import tiles

    with tiles.poison():
        yield


def _cast(a, dtype):
    """An adapter (or list) on the GPU in dtype: the launchers refuse adapter tensors on another device."""
    import dataclasses

    if a is None:
        return None
    if isinstance(a, list):
        return [_cast(v, dtype) for v in a]
    return dataclasses.replace(a, **{f.name: getattr(a, f.name).to("cuda", dtype) for f in dataclasses.fields(a)
                                     if isinstance(getattr(a, f.name), torch.Tensor)})


def run_modconv(prec, n, c_in, c_out, h, w, k, mode, adapter, task_ids=None, styled=True, seed=0,
                channels_last=False):
    g = torch.Generator().manual_seed(seed)
    dt = DTYPES[prec]
    up, down = mode == "up", mode == "down"
    x = torch.randn(n, c_in, h, w, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(c_out, c_in, k, k, generator=g)
    style = torch.randn(n, c_in, generator=g) + 1.0
    oh, ow = FL.modconv_output_size(h, w, k, up, down)
    kw = (dict(noise=torch.randn(n, 1, oh, ow, generator=g) * 0.1, bias=torch.randn(c_out, generator=g),
               activation="lrelu") if styled else
          dict(demodulate=False, bias=torch.randn(c_out, generator=g), skip=torch.randn(n, c_out, oh, ow, generator=g)))
    scale = 1 / (c_in * k * k) ** 0.5
    with tf32(prec == "tf32"):
        out = FL.modulated_conv2d(x.cuda().to(dt), weight.cuda().to(dt), style.cuda().to(dt),
                                  adapter=_cast(adapter, dt), task_ids=None if task_ids is None else task_ids.cuda(),
                                  scale=scale, up=up, down=down, backend="triton",
                                  **{key: v.cuda().to(dt) if isinstance(v, torch.Tensor) else v for key, v in kw.items()})
    ref = FL.modulated_conv2d(x.double(), weight.double(), style.double(), adapter=_cpu(to64(adapter)),
                              task_ids=task_ids, scale=scale, up=up, down=down, backend="torch",
                              **{key: v.double() if isinstance(v, torch.Tensor) else v for key, v in kw.items()})
    err = rel_err(out.float(), ref)
    assert err < TOL[prec], f"{prec}: relative L2 error {err:.3g}"


@pytest.mark.parametrize("prec", list(TOL))
@pytest.mark.parametrize("k,mode", list(itertools.product((1, 3), ("plain", "up", "down"))))
@pytest.mark.parametrize("kind", KINDS)
def test_gpu_modconv(prec, k, mode, kind):
    g = torch.Generator().manual_seed(1)
    adapter = conv_adapter(kind, 96, 72, k, 4, "cpu", g)
    run_modconv(prec, 4, 72, 96, 16, 13, k, mode, adapter, styled=mode != "down", seed=2)


@pytest.mark.parametrize("prec", list(TOL))
@pytest.mark.parametrize("mode", ["plain", "up", "down"])
def test_gpu_task_ids(prec, mode):
    g = torch.Generator().manual_seed(3)
    adapters = [conv_adapter("llora-both", 64, 48, 3, 2, "cpu", g), None,
                conv_adapter("lora", 64, 48, 3, 8, "cpu", g), conv_adapter("left-inner", 64, 48, 3, 1, "cpu", g)]
    run_modconv(prec, 8, 48, 64, 8, 8, 3, mode, adapters, task_ids=torch.tensor([3, 0, 0, 2, 1, 1, 2, 3]))


@pytest.mark.parametrize("prec", list(TOL))
def test_gpu_linear(prec):
    g = torch.Generator().manual_seed(4)
    dt = DTYPES[prec]
    for kind, tids in itertools.product(("none", "lora-bias", "left"), (False, True)):
        ad = linear_adapter(kind, 512, 512, 8, "cpu", g)
        adapter = [ad, None, linear_adapter("lora", 512, 512, 1, "cpu", g)] if tids else ad
        task_ids = torch.tensor([0, 2, 1, 0, 0, 2]) if tids else None
        x, w, b = torch.randn(6, 512, generator=g), torch.randn(512, 512, generator=g), torch.randn(512, generator=g)
        kw = dict(scale=512 ** -0.5, bias_scale=0.01, activation="lrelu")
        with tf32(prec == "tf32"):
            out = FL.linear(x.cuda().to(dt), w.cuda().to(dt), b.cuda().to(dt), adapter=_cast(adapter, dt),
                            task_ids=None if task_ids is None else task_ids.cuda(), backend="triton", **kw)
        ref = FL.linear(x.double(), w.double(), b.double(), adapter=_cpu(to64(adapter)), task_ids=task_ids,
                        backend="torch", **kw)
        assert rel_err(out.float(), ref) < TOL[prec]


@pytest.mark.parametrize("prec", ["fp32", "bf16"])
def test_gpu_every_config(prec):
    """Every forward tile (8-warp ones included: the flattened K loop must compile correctly there), every mode,
    3x3 and 1x1."""
    from kernels import tiles

    g = torch.Generator().manual_seed(5)
    for cfg in tiles.CONV_CONFIGS:
        for k in (3, 1):
            ad = conv_adapter("llora-both", 130, 96, k, 4, "cpu", g)
            for mode in ("plain", "up", "down"):
                with tiles.force(conv=cfg.name):
                    run_modconv(prec, 3, 96, 130, 17, 11, k, mode, ad)
    for p, f in zip(tiles.PROLOGUE_CONFIGS, tiles.FIR_CONFIGS):
        with tiles.force(prologue=p.name, fir=f.name):
            run_modconv(prec, 2, 96, 130, 17, 11, 3, "down", conv_adapter("left-inner", 130, 96, 3, 2, "cpu", g))
    for cfg in tiles.LINEAR_CONFIGS:
        with tiles.force(linear=cfg.name):
            test_gpu_linear(prec)


@pytest.mark.parametrize("prec", ["fp32", "tf32", "bf16"])
@pytest.mark.parametrize("split", [2, 7])
def test_gpu_split_k(prec, split):
    """Split-K at StyleGAN2 small-layer shapes (512 channels, 4-8 px), with and without task ids."""
    from kernels import tiles

    g = torch.Generator().manual_seed(6)
    ad = conv_adapter("llora-inner", 512, 512, 3, 2, "cpu", g)
    with tiles.split_k(split):
        run_modconv(prec, 4, 512, 512, 4, 4, 3, "plain", ad)
        run_modconv(prec, 4, 512, 512, 4, 4, 3, "up", ad)
        run_modconv(prec, 4, 512, 512, 8, 8, 3, "plain", [ad, None], task_ids=torch.tensor([1, 0, 0, 1]))


@pytest.mark.parametrize("prec", ["fp32", "bf16"])
def test_gpu_heuristic_ladder(prec):
    """The configurations the heuristic picks for the StyleGAN2-256 ladder (batch 4 and 16), channels-last
    inputs as the generator passes them."""
    from bench.cases import ladder

    g = torch.Generator().manual_seed(7)
    for case in ladder("256"):
        if case.res > 64:
            continue
        ad = conv_adapter("llora-both", case.c_out, case.c_in, case.k, 1, "cpu", g)
        for n in (4, 16):
            run_modconv(prec, n, case.c_in, case.c_out, case.in_res, case.in_res, case.k,
                        "up" if case.up else "plain", ad, styled=case.demod, channels_last=True)


def test_gpu_autotune_cache(tmp_path, monkeypatch):
    from kernels import tiles

    monkeypatch.setattr(tiles, "_cache_file", str(tmp_path / "tune.json"))
    tiles.set_autotune(True)
    try:
        run_modconv("fp32", 4, 64, 64, 8, 8, 3, "plain", None)
        run_modconv("fp32", 4, 64, 64, 8, 8, 3, "up", None)
    finally:
        tiles.set_autotune(False)
    assert any(key[0] == "conv" for key in tiles.cache())
    assert (tmp_path / "tune.json").exists()


def test_gpu_cuda_graph_capture():
    """A launch (prologue, conv, blur, epilogue) has no host sync: it captures and replays."""
    from fastlora import LLoRA

    dev = "cuda"
    x = torch.randn(4, 64, 8, 8, device=dev)
    w = torch.randn(64, 64, 3, 3, device=dev)
    s = torch.randn(4, 64, device=dev)
    ad = [LLoRA(torch.randn(64, 2, device=dev), torch.randn(64, 2, device=dev), torch.randn(2, 2, 9, device=dev),
                act="both"), None]
    tid = torch.tensor([0, 1, 1, 0], device=dev)
    kw = dict(adapter=ad, task_ids=tid, scale=1 / 24, up=True, bias=torch.randn(64, device=dev), activation="lrelu",
              backend="triton")
    expect = FL.modulated_conv2d(x, w, s, **kw)  # warm-up (compiles)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        FL.modulated_conv2d(x, w, s, **kw)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = FL.modulated_conv2d(x, w, s, **kw)
    x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    ref = FL.modulated_conv2d(x.double(), w.double(), s.double(),
                              **{**kw, "adapter": _cast(ad, torch.float64), "bias": kw["bias"].double(),
                                 "backend": "torch"})  # float64: cuDNN's default TF32 would be the larger error
    assert rel_err(out, ref) < 1e-5 and rel_err(expect, ref) > 1e-3  # replay saw the new input


def _round_tf32(t: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(_to_tf32(t.numpy(), "round"))


def test_gpu_tf32_operands_rounded():
    """With TF32 on, the fused linear equals fp32 arithmetic on TF32-rounded operands (the hardware alone would
    truncate them: ~3e-4 off that), and differs from unrounded fp32 by TF32's error."""
    g = torch.Generator().manual_seed(11)
    x, w, b = torch.randn(64, 512, generator=g), torch.randn(256, 512, generator=g), torch.randn(256, generator=g)
    with tf32(True):
        out = FL.linear(x.cuda(), w.cuda(), b.cuda(), adapter=None, scale=512 ** -0.5, bias_scale=0.01,
                        backend="triton").cpu()
    exact = lambda xx, ww: (xx.double() @ ww.double().T) * 512 ** -0.5 + 0.01 * b.double()  # noqa: E731
    assert rel_err(out, exact(_round_tf32(x), _round_tf32(w))) < 1e-5
    assert rel_err(out, exact(x, w)) > 5e-5
