"""GPU-only checks of the fused backward (`-m gpu`; skipped without CUDA): every gradient in fp32 (TF32 off),
TF32 and bf16 against the float64 reference at GPU-sized shapes, every backward tile config, the atomic and
deterministic reductions (bit-identical repeated runs), and second order through the reference routing."""
from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

import fastlora
from fastlora import functional as FL

from tests.test_kernels_backward import _leaves, _tensors, rel
from tests.test_kernels_forward import KINDS, conv_adapter, linear_adapter, to64
from tests.test_kernels_gpu import DTYPES, tf32

pytestmark = pytest.mark.gpu

GTOL = {"fp32": 1e-5, "tf32": 5e-3, "bf16": 5e-2}


def limit(prec: str, err_torch: float) -> float:
    """A gradient's error limit: GTOL, or twice the error of PyTorch itself in the same precision, whichever is
    larger. Through a leaky ReLU the gradient's error is not the forward's: an output within rounding of 0
    takes the other slope, so the error grows like the square root of the forward's (TF32: ~2e-4 forward,
    0.5-1.6e-2 gradients; without the activation 3e-4, in Triton's interpreter with TF32 operands)."""
    return max(GTOL[prec], 2 * err_torch)


@pytest.fixture(autouse=True)
def _poisoned():
    from kernels import tiles

    with tiles.poison():
        yield


def _dev(a, dt):
    """Leaf copies of an adapter (or list) on the GPU in dtype dt."""
    if a is None:
        return None
    if isinstance(a, list):
        return [_dev(v, dt) for v in a]
    return dataclasses.replace(a, **{f.name: getattr(a, f.name).detach().cuda().to(dt).requires_grad_()
                                     for f in dataclasses.fields(a) if isinstance(getattr(a, f.name), torch.Tensor)})


def conv_grads(prec, n, c_in, c_out, h, w, k, mode, adapter, task_ids=None, seed=0, weight_grad=True):
    g = torch.Generator().manual_seed(seed)
    dt = DTYPES[prec]
    up, down = mode == "up", mode == "down"
    x, weight = torch.randn(n, c_in, h, w, generator=g), torch.randn(c_out, c_in, k, k, generator=g)
    style = torch.randn(n, c_in, generator=g) + 1.0
    oh, ow = FL.modconv_output_size(h, w, k, up, down)
    noise, bias = torch.randn(n, 1, oh, ow, generator=g) * 0.1, torch.randn(c_out, generator=g)
    gy = torch.randn(n, c_out, oh, ow, generator=g)
    res = []
    for backend, on_gpu in (("triton", True), ("torch", True), ("torch", False)):  # fused, torch alike, float64
        if on_gpu:
            cast = lambda t: t.cuda().to(dt)  # noqa: E731
            ad = _dev(adapter, dt)
        else:
            cast = lambda t: t.double()  # noqa: E731
            ad = _leaves(to64(adapter))
        ts = [cast(t).requires_grad_() for t in (x, weight, style, noise, bias)]
        ts[1].requires_grad_(weight_grad)
        tid = None if task_ids is None else (task_ids.cuda() if on_gpu else task_ids)
        with tf32(prec == "tf32"):
            y = FL.modulated_conv2d(ts[0], ts[1], ts[2], adapter=ad, task_ids=tid, scale=(c_in * k * k) ** -0.5,
                                    up=up, down=down, noise=ts[3], bias=ts[4], activation="lrelu", backend=backend)
            res.append(torch.autograd.grad(y, [t for t in ts if t.requires_grad] + _tensors(ad),
                                           cast(gy).to(y.dtype)))
    for i, (a, t, b) in enumerate(zip(*res)):
        err, err_torch = rel(a.float(), b), rel(t.float(), b)
        assert err < limit(prec, err_torch), f"{prec} gradient {i}: relative L2 error {err:.3g} (torch {err_torch:.3g})"


@pytest.mark.parametrize("prec", list(GTOL))
@pytest.mark.parametrize("k,mode", list(itertools.product((1, 3), ("plain", "up", "down"))))
@pytest.mark.parametrize("kind", KINDS)
def test_gpu_modconv_backward(prec, k, mode, kind):
    g = torch.Generator().manual_seed(1)
    conv_grads(prec, 4, 72, 96, 16, 13, k, mode, conv_adapter(kind, 96, 72, k, 4, "cpu", g), seed=2)


@pytest.mark.parametrize("prec", list(GTOL))
@pytest.mark.parametrize("mode", ["plain", "up", "down"])
def test_gpu_backward_task_ids(prec, mode):
    g = torch.Generator().manual_seed(3)
    adapters = [conv_adapter("llora-both", 64, 48, 3, 2, "cpu", g), None,
                conv_adapter("lora", 64, 48, 3, 8, "cpu", g), conv_adapter("left-inner", 64, 48, 3, 1, "cpu", g)]
    conv_grads(prec, 8, 48, 64, 8, 8, 3, mode, adapters, task_ids=torch.tensor([3, 0, 0, 2, 1, 1, 2, 3]))


@pytest.mark.parametrize("prec", ["fp32", "bf16"])
def test_gpu_every_backward_config(prec):
    from kernels import tiles

    g = torch.Generator().manual_seed(5)
    for cfg in tiles.BWD_CONFIGS:
        k = 1 if cfg.num_warps > 4 else 3
        for mode in ("plain", "up", "down"):
            with tiles.force(dgrad=cfg.name, wgrad=cfg.name):
                conv_grads(prec, 3, 96, 130, 17, 11, k, mode, conv_adapter("llora-both", 130, 96, k, 4, "cpu", g))
    for cfg in tiles.REDUCE_CONFIGS:
        with tiles.force(reduce=cfg.name):
            conv_grads(prec, 2, 96, 130, 9, 8, 3, "plain", conv_adapter("left-inner", 130, 96, 3, 2, "cpu", g))


@pytest.mark.parametrize("prec", list(GTOL))
def test_gpu_linear_backward(prec):
    g = torch.Generator().manual_seed(4)
    dt = DTYPES[prec]
    for kind, tids in itertools.product(("none", "lora-bias", "left"), (False, True)):
        ad = linear_adapter(kind, 512, 512, 8, "cpu", g)
        adapter = [ad, None, linear_adapter("lora", 512, 512, 1, "cpu", g)] if tids else ad
        task_ids = torch.tensor([0, 2, 1, 0, 0, 2]) if tids else None
        x, w, b = torch.randn(6, 512, generator=g), torch.randn(512, 512, generator=g), torch.randn(512, generator=g)
        gy = torch.randn(6, 512, generator=g)
        kw = dict(scale=512 ** -0.5, bias_scale=0.01, activation="lrelu")
        res = []
        for backend, on_gpu in (("triton", True), ("torch", True), ("torch", False)):  # fused, torch alike, float64
            cast = (lambda t: t.cuda().to(dt)) if on_gpu else (lambda t: t.double())
            ts = [cast(t).requires_grad_() for t in (x, w, b)]
            a = _dev(adapter, dt) if on_gpu else _leaves(to64(adapter))
            with tf32(prec == "tf32"):
                y = FL.linear(*ts, adapter=a, task_ids=None if task_ids is None else task_ids.to(ts[0].device),
                              backend=backend, **kw)
                res.append(torch.autograd.grad(y, ts + _tensors(a), cast(gy).to(y.dtype), allow_unused=True))
        for i, (ga, gt, gb) in enumerate(zip(*res)):
            if gb is not None:
                err, err_torch = rel(ga.float(), gb), rel(gt.float(), gb)
                assert err < limit(prec, err_torch), f"{kind} tids={tids} {prec} gradient {i}: {err:.3g} " \
                                                     f"(torch {err_torch:.3g})"


def test_gpu_deterministic_bitwise():
    """Atomic reductions may differ run to run on the GPU; deterministic mode must not."""
    g = torch.Generator().manual_seed(6)
    ad = conv_adapter("llora-both", 256, 256, 3, 8, "cpu", g)
    x = torch.randn(8, 256, 16, 16, generator=g).cuda()
    w = torch.randn(256, 256, 3, 3, generator=g).cuda()
    s = torch.randn(8, 256, generator=g).cuda()
    gy = torch.randn(8, 256, 16, 16, generator=g).cuda()

    def grads():
        a = _dev(ad, torch.float32)
        ss = s.clone().requires_grad_()
        y = FL.modulated_conv2d(x, w, ss, adapter=a, scale=1 / 48, backend="triton")
        return torch.autograd.grad(y, [ss] + _tensors(a), gy)

    fastlora.set_deterministic(True)
    try:
        first, second = grads(), grads()
    finally:
        fastlora.set_deterministic(False)
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    for a, b in zip(first, grads()):  # atomics: same values up to summation order
        assert rel(a, b) < 1e-5


# ----------------------------------------------------------------------------- factorised weight gradient

@pytest.mark.parametrize("prec", list(GTOL))
@pytest.mark.parametrize("k,mode", list(itertools.product((1, 3), ("plain", "up", "down"))))
@pytest.mark.parametrize("kind", ["llora-inner", "llora-none", "lora"])
def test_gpu_factorised_backward(prec, k, mode, kind):
    """Frozen base: the factorised path runs (no full G) and matches the float64 reference."""
    from kernels import tiles

    g = torch.Generator().manual_seed(7)
    tiles.COUNTERS.clear()
    conv_grads(prec, 4, 72, 96, 16, 13, k, mode, conv_adapter(kind, 96, 72, k, 4, "cpu", g), seed=2,
               weight_grad=False)
    assert tiles.COUNTERS.get("wgrad_factorised", 0) == 1 and "wgrad_full_kernel" not in tiles.COUNTERS


@pytest.mark.parametrize("prec", ["fp32", "bf16"])
def test_gpu_factorised_task_ids_and_configs(prec):
    from kernels import tiles

    g = torch.Generator().manual_seed(8)
    adapters = [conv_adapter("llora-inner", 64, 48, 3, 2, "cpu", g), None,
                conv_adapter("lora", 64, 48, 3, 8, "cpu", g), conv_adapter("llora-none", 64, 48, 3, 1, "cpu", g)]
    tid = torch.tensor([3, 0, 0, 2, 1, 1, 2, 3])
    for cfg in tiles.CONV_CONFIGS:
        k = 1 if cfg.num_warps > 4 else 3
        ads = [None if a is None else conv_adapter("lora" if i == 2 else "llora-inner", 64, 48, k, 4, "cpu", g)
               for i, a in enumerate(adapters)] if k == 1 else adapters
        for mode in ("plain", "up", "down"):
            with tiles.force(factor=cfg.name), tiles.wgrad_path("factorised"):
                conv_grads(prec, 8, 48, 64, 9, 7, k, mode, ads, task_ids=tid, weight_grad=False)
    for cfg in tiles.REDUCE_CONFIGS:
        with tiles.force(reduce=cfg.name), tiles.wgrad_path("factorised"):
            conv_grads(prec, 2, 96, 130, 9, 8, 3, "plain", conv_adapter("lora", 130, 96, 3, 2, "cpu", g),
                       weight_grad=False)


def test_gpu_factorised_deterministic_bitwise():
    from kernels import tiles

    g = torch.Generator().manual_seed(9)
    ads = [conv_adapter("llora-inner", 256, 256, 3, 8, "cpu", g), conv_adapter("lora", 256, 256, 3, 4, "cpu", g)]
    x = torch.randn(8, 256, 16, 16, generator=g).cuda()
    w = torch.randn(256, 256, 3, 3, generator=g).cuda()
    s = torch.randn(8, 256, generator=g).cuda()
    gy = torch.randn(8, 256, 16, 16, generator=g).cuda()
    tid = torch.tensor([0, 1, 1, 0, 0, 1, 0, 1]).cuda()

    def grads():
        a = _dev(ads, torch.float32)
        ss = s.clone().requires_grad_()
        y = FL.modulated_conv2d(x, w, ss, adapter=a, task_ids=tid, scale=1 / 48, backend="triton")
        return torch.autograd.grad(y, [ss] + _tensors(a), gy)

    fastlora.set_deterministic(True)
    try:
        tiles.COUNTERS.clear()
        first, second = grads(), grads()
        assert tiles.COUNTERS.get("wgrad_factorised", 0) == 2
        assert not any(key.endswith("_atomic") for key in tiles.COUNTERS)
    finally:
        fastlora.set_deterministic(False)
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    with tiles.wgrad_path("full"):  # the two paths agree
        full = grads()
    for a, b in zip(first, full):
        assert rel(a, b) < 1e-4
