"""Fused Triton forward kernels against the float64 torch reference (docs/design.md §7).

On a CPU-only machine the kernels run in Triton's interpreter (conftest sets TRITON_INTERPRET=1
before anything imports them): fp32 logic only, tiny shapes. Every launcher-allocated buffer is
NaN-poisoned before the kernels run, every tile configuration is forced on at least one shape.
"""
from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

from fastlora import LeFT, LLoRA, LoRA
from fastlora import functional as FL

FP32_TOL = 1e-5
KINDS = ("none", "lora", "llora-both", "llora-inner", "llora-none", "left-none", "left-inner")
RANKS = (1, 2, 4, 8)
BATCHES = (1, 3, 4)
CHANNELS = ((3, 5), (20, 18), (37, 17))  # (C_in, C_out): not multiples of any tile, one > BLOCK_K
EPILOGUES = ("none", "styled", "torgb", "noise-full")


@pytest.fixture(autouse=True)
def _poisoned():
    from kernels import tiles

    with tiles.poison():
        yield


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert not torch.isnan(out).any(), "NaN in the kernel output (an element was never written)"
    return ((out.double().cpu() - ref.double().cpu()).norm() / ref.double().cpu().norm()).item()


def to64(a):
    if a is None:
        return None
    if isinstance(a, (list, tuple)):
        return [to64(v) for v in a]
    if isinstance(a, torch.Tensor):
        return a.double()
    return dataclasses.replace(a, **{f.name: getattr(a, f.name).double() for f in dataclasses.fields(a)
                                     if isinstance(getattr(a, f.name), torch.Tensor)})


def conv_adapter(kind: str, c_out: int, c_in: int, k: int, r: int, dev: str, g: torch.Generator):
    kk = k * k

    def rn(*s, scale=1.0):
        return (torch.randn(*s, generator=g) * scale).to(dev)

    if kind == "none":
        return None
    if kind == "lora":
        return LoRA(rn(c_in * kk, r), rn(c_out, r), alpha=0.3)
    if kind.startswith("llora"):
        return LLoRA(rn(c_in, r), rn(c_out, r), rn(r, r, kk), alpha=0.4, act=kind.split("-")[1])
    return LeFT.conv(rn(c_out, r), rn(r, r, kk), rn(c_out, r, scale=0.5), rn(kk, r), rn(c_in, r, scale=0.5),
                     rn(c_in, r, scale=0.3), rn(kk, r), act=kind.split("-")[1])


def epilogue_args(name: str, n: int, c_out: int, oh: int, ow: int, dev: str, g: torch.Generator) -> dict:
    def rn(*s):
        return torch.randn(*s, generator=g).to(dev)

    if name == "styled":  # StyledConv: shared noise image, bias, leaky-ReLU·√2
        return dict(noise=rn(n, 1, oh, ow) * 0.5, bias=rn(c_out), activation="lrelu")
    if name == "torgb":  # ToRGB: no demodulation, bias, skip add
        return dict(demodulate=False, bias=rn(c_out), skip=rn(n, c_out, oh, ow))
    if name == "noise-full":
        return dict(noise=rn(1, c_out, oh, ow), activation="lrelu", skip=rn(n, c_out, oh, ow))
    return {}


def check_modconv(dev, n, c_in, c_out, h, w, k, mode, adapter, task_ids=None, epi="none", seed=0, tol=FP32_TOL,
                  channels_last=False):
    g = torch.Generator().manual_seed(seed)
    up, down = mode == "up", mode == "down"
    x = torch.randn(n, c_in, h, w, generator=g).to(dev)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(c_out, c_in, k, k, generator=g).to(dev)
    style = (torch.randn(n, c_in, generator=g) + 1.0).to(dev)
    oh, ow = FL.modconv_output_size(h, w, k, up, down)
    kw = epilogue_args(epi, n, c_out, oh, ow, dev, g)
    scale = 1 / (c_in * k * k) ** 0.5
    out = FL.modulated_conv2d(x, weight, style, adapter=adapter, task_ids=task_ids, scale=scale, up=up, down=down,
                              backend="triton", **kw)
    kw64 = {key: to64(v) if isinstance(v, torch.Tensor) else v for key, v in kw.items()}
    ref = FL.modulated_conv2d(to64(x).cpu(), to64(weight).cpu(), to64(style).cpu(), adapter=_cpu(to64(adapter)),
                              task_ids=None if task_ids is None else task_ids.cpu(), scale=scale, up=up, down=down,
                              backend="torch", **{key: v.cpu() if isinstance(v, torch.Tensor) else v
                                                  for key, v in kw64.items()})
    assert out.shape == ref.shape and out.dtype == x.dtype
    assert out.is_contiguous(memory_format=torch.channels_last), "the fused path returns channels-last outputs"
    err = rel_err(out, ref)
    assert err < tol, f"relative L2 error {err:.3g}"
    return err


def _cpu(a):
    if a is None:
        return None
    if isinstance(a, list):
        return [_cpu(v) for v in a]
    return dataclasses.replace(a, **{f.name: getattr(a, f.name).cpu() for f in dataclasses.fields(a)
                                     if isinstance(getattr(a, f.name), torch.Tensor)})


CASES = list(itertools.product((1, 3), ("plain", "up", "down"), KINDS))


@pytest.mark.parametrize("i,k,mode,kind", [(i, *c) for i, c in enumerate(CASES)],
                         ids=[f"k{k}-{m}-{kd}" for k, m, kd in CASES])
def test_modconv_matrix(kernel_device, i, k, mode, kind):
    r, n = RANKS[i % 4], BATCHES[i % 3]
    c_in, c_out = CHANNELS[i % 3]
    h, w = ((5, 7), (4, 3), (9, 6))[i % 3]
    g = torch.Generator().manual_seed(100 + i)
    adapter = conv_adapter(kind, c_out, c_in, k, r, kernel_device, g)
    check_modconv(kernel_device, n, c_in, c_out, h, w, k, mode, adapter, epi=EPILOGUES[i % 4], seed=i,
                  channels_last=i % 2 == 1)


@pytest.mark.parametrize("k,mode", list(itertools.product((1, 3), ("plain", "up", "down"))))
def test_modconv_task_ids(kernel_device, k, mode):
    n, c_in, c_out, r = 4, 20, 18, 2
    g = torch.Generator().manual_seed(7)
    adapters = [conv_adapter("llora-both", c_out, c_in, k, 2, kernel_device, g), None,
                conv_adapter("lora", c_out, c_in, k, 1, kernel_device, g),
                conv_adapter("left-inner", c_out, c_in, k, 4, kernel_device, g)]
    task_ids = torch.tensor([3, 0, 0, 2], device=kernel_device)
    check_modconv(kernel_device, n, c_in, c_out, 5, 6, k, mode, adapters, task_ids=task_ids, epi="styled", seed=3)
    # int32 indices, one sample per task incl. the base
    task_ids = torch.tensor([1, 2, 3, 0], device=kernel_device, dtype=torch.int32)
    check_modconv(kernel_device, n, c_in, c_out, 5, 6, k, mode, adapters, task_ids=task_ids, epi="torgb", seed=4)


@pytest.mark.parametrize("shape", [(1, 1, 5, 7), (4, 1, 5, 7), (1, 18, 5, 7), (4, 18, 5, 7)])
def test_noise_broadcast(kernel_device, shape):
    g = torch.Generator().manual_seed(1)
    n, c_in, c_out, h, w = 4, 6, 18, 5, 7
    x = torch.randn(n, c_in, h, w, generator=g).to(kernel_device)
    weight = torch.randn(c_out, c_in, 3, 3, generator=g).to(kernel_device)
    style = torch.randn(n, c_in, generator=g).to(kernel_device)
    noise = torch.randn(*shape, generator=g).to(kernel_device)
    out = FL.modulated_conv2d(x, weight, style, noise=noise, backend="triton")
    ref = FL.modulated_conv2d(x.double().cpu(), weight.double().cpu(), style.double().cpu(),
                              noise=noise.double().cpu(), backend="torch")
    assert rel_err(out, ref) < FP32_TOL


# ----------------------------------------------------------------------------- every tile configuration

def _conv_configs():
    from kernels import tiles

    return [c.name for c in tiles.CONV_CONFIGS]


@pytest.mark.parametrize("name", _conv_configs())
@pytest.mark.parametrize("mode", ["plain", "up", "down"])
def test_every_conv_config(kernel_device, name, mode):
    from kernels import tiles

    g = torch.Generator().manual_seed(11)
    k = 1 if mode == "down" and name.endswith("x32") else 3
    adapter = conv_adapter("llora-both", 18, 37, k, 2, kernel_device, g)
    with tiles.force(conv=name):
        check_modconv(kernel_device, 2, 37, 18, 9, 5, k, mode, adapter, epi="styled", seed=5,
                      channels_last=mode != "down")


@pytest.mark.parametrize("split", [2, 5])
@pytest.mark.parametrize("mode", ["plain", "up", "down"])
@pytest.mark.parametrize("tasks", [False, True], ids=["one-task", "task-ids"])
def test_split_k(kernel_device, split, mode, tasks):
    """Split-K (the small layers' path): partial tiles in a workspace, summed in a fixed order by the reduction
    kernel that applies d and the epilogue; K steps span several taps and C_in blocks (C_in 37, BLOCK_K 32)."""
    from kernels import tiles

    g = torch.Generator().manual_seed(14)
    n = 3
    if tasks:
        adapter = [conv_adapter("llora-inner", 20, 37, 3, 2, kernel_device, g), None,
                   conv_adapter("lora", 20, 37, 3, 1, kernel_device, g)]
        task_ids = torch.tensor([2, 0, 1], device=kernel_device)
    else:
        adapter, task_ids = conv_adapter("left-inner", 20, 37, 3, 2, kernel_device, g), None
    for epi in ("styled", "torgb"):
        with tiles.force(conv="conv_64x64x32"), tiles.split_k(split):
            check_modconv(kernel_device, n, 37, 20, 5, 4, 3, mode, adapter, task_ids=task_ids, epi=epi, seed=split,
                          channels_last=True)


def test_split_k_heuristic_fills_the_gpu():
    """The tile/split heuristic for a 132-SM GPU (as `bench compile` sees it): every 3x3 layer of 4-16 px at
    batch 4 launches at least 66 CTAs (half the SMs), and the layers from 32 px up do not split."""
    import triton

    from kernels import common, tiles

    for res, up in ((4, False), (8, True), (8, False), (16, True), (16, False), (32, False), (64, True)):
        rows = ((res + 2) // 2) ** 2 * 4 if up else res * res * 4
        prob = tiles.ConvProblem(rows=rows, n=512, k_steps_of=lambda bk, up=up: (4 if up else 9) * 512 // bk,
                                 z=4 if up else 1, elsize=2)
        with common.record(132):
            c, s = tiles.choose_conv("conv", prob, torch.device("cpu"))
        steps = prob.k_steps_of(c.block_k)
        s = triton.cdiv(steps, triton.cdiv(steps, s))
        ctas = triton.cdiv(rows, c.block_m) * triton.cdiv(512, c.block_n) * prob.z * s
        if res <= 16:
            assert ctas >= 66, (res, up, c.name, s, ctas)
        else:
            assert s == 1, (res, up, c.name, s)


@pytest.mark.parametrize("prologue", ["pro_16x16", "pro_32x16"])
@pytest.mark.parametrize("fir", ["fir_16x128", "fir_64x64"])
def test_every_prologue_and_fir_config(kernel_device, prologue, fir):
    from kernels import tiles

    g = torch.Generator().manual_seed(12)
    # C_out 70 > 64 gives several prologue tiles; the down path runs the FIR twice the size of up.
    adapter = conv_adapter("left-inner", 70, 37, 3, 3, kernel_device, g)
    with tiles.force(prologue=prologue, fir=fir):
        check_modconv(kernel_device, 1, 37, 70, 7, 5, 3, "down" if fir == "fir_64x64" else "up", adapter,
                      epi="styled", seed=6)


# ----------------------------------------------------------------------------- linear

def linear_adapter(kind: str, d_out: int, d_in: int, r: int, dev: str, g: torch.Generator):
    def rn(*s, scale=1.0):
        return (torch.randn(*s, generator=g) * scale).to(dev)

    if kind == "none":
        return None
    if kind == "lora":
        return LoRA(rn(d_in, r), rn(d_out, r), alpha=0.5)
    if kind == "lora-bias":
        return LoRA(rn(d_in, r), rn(d_out, r), alpha=0.5, bias=rn(d_out))
    return LeFT.linear(rn(d_out, r), rn(d_in, r), rn(d_out, r + 1, scale=0.3), rn(d_in, r + 1),
                       rn(d_out), rn(d_out))


def check_linear(dev, n, d_in, d_out, adapter, task_ids=None, bias=True, activation=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=g).to(dev)
    weight = torch.randn(d_out, d_in, generator=g).to(dev)
    b = torch.randn(d_out, generator=g).to(dev) if bias else None
    kw = dict(scale=0.7 / d_in ** 0.5, bias_scale=0.01, activation=activation)
    out = FL.linear(x, weight, b, adapter=adapter, task_ids=task_ids, backend="triton", **kw)
    ref = FL.linear(x.double().cpu(), weight.double().cpu(), None if b is None else b.double().cpu(),
                    adapter=_cpu(to64(adapter)), task_ids=None if task_ids is None else task_ids.cpu(),
                    backend="torch", **kw)
    err = rel_err(out, ref)
    assert out.shape == ref.shape and err < FP32_TOL, f"relative L2 error {err:.3g}"


LIN_CASES = list(itertools.product(("none", "lora", "lora-bias", "left"), (True, False), (None, "lrelu")))


@pytest.mark.parametrize("i,kind,bias,act", [(i, *c) for i, c in enumerate(LIN_CASES)])
def test_linear_matrix(kernel_device, i, kind, bias, act):
    g = torch.Generator().manual_seed(200 + i)
    d_in, d_out = ((37, 21), (70, 5), (16, 130))[i % 3]
    adapter = linear_adapter(kind, d_out, d_in, RANKS[i % 4], kernel_device, g)
    check_linear(kernel_device, BATCHES[i % 3], d_in, d_out, adapter, bias=bias, activation=act, seed=i)


@pytest.mark.parametrize("bias", [True, False])
def test_linear_task_ids(kernel_device, bias):
    g = torch.Generator().manual_seed(9)
    d_in, d_out = 37, 21
    adapters = [linear_adapter("lora-bias", d_out, d_in, 2, kernel_device, g), None,
                linear_adapter("left", d_out, d_in, 4, kernel_device, g),
                linear_adapter("lora", d_out, d_in, 8, kernel_device, g)]
    tid = torch.tensor([2, 0, 1, 3, 3], device=kernel_device)
    check_linear(kernel_device, 5, d_in, d_out, adapters, task_ids=tid, bias=bias, activation="lrelu")
    check_linear(kernel_device, 3, d_in, d_out, adapters[1:2] + adapters[3:],
                 task_ids=torch.tensor([1, 1, 0], device=kernel_device, dtype=torch.int32), bias=bias)


@pytest.mark.parametrize("name", ["lin_16x32x64", "lin_32x64x64", "lin_64x128x32"])
def test_every_linear_config(kernel_device, name):
    from kernels import tiles

    g = torch.Generator().manual_seed(13)
    adapter = linear_adapter("left", 130, 70, 3, kernel_device, g)
    with tiles.force(linear=name):
        check_linear(kernel_device, 20, 70, 130, adapter, activation="lrelu")
        check_linear(kernel_device, 4, 70, 130, [None, linear_adapter("lora", 130, 70, 2, kernel_device, g)],
                     task_ids=torch.tensor([1, 0, 1, 1], device=kernel_device))


# ----------------------------------------------------------------------------- errors

def test_triton_path_rejects_bad_input(kernel_device):
    x = torch.randn(2, 4, 5, 5, device=kernel_device)
    w = torch.randn(3, 4, 3, 3, device=kernel_device)
    s = torch.randn(2, 4, device=kernel_device)
    with pytest.raises(ValueError, match="float64"):
        FL.modulated_conv2d(x.double(), w.double(), s.double(), backend="triton")
    a = LLoRA(torch.randn(4, 2, device=kernel_device), torch.randn(3, 2, device=kernel_device),
              torch.randn(2, 2, 9, device=kernel_device))
    with pytest.raises(ValueError, match="task_ids"):
        FL.modulated_conv2d(x, w, s, adapter=[a, None], backend="triton")
    with pytest.raises(ValueError, match="task_ids"):
        FL.modulated_conv2d(x, w, s, adapter=[a], task_ids=torch.zeros(3, dtype=torch.long, device=kernel_device),
                            backend="triton")
    with pytest.raises(ValueError, match="task_ids"):
        FL.modulated_conv2d(x, w, s, adapter=a, task_ids=torch.zeros(2, dtype=torch.long, device=kernel_device),
                            backend="triton")
    bad = LLoRA(torch.randn(5, 2, device=kernel_device), torch.randn(3, 2, device=kernel_device),
                torch.randn(2, 2, 9, device=kernel_device))
    with pytest.raises(ValueError, match="does not fit"):
        FL.modulated_conv2d(x, w, s, adapter=bad, backend="triton")
    with pytest.raises(ValueError, match="does not apply"):
        FL.linear(torch.randn(2, 4, device=kernel_device), torch.randn(3, 4, device=kernel_device), adapter=a,
                  backend="triton")


# ----------------------------------------------------------------------------- autograd (interim backward)

def _grads(backend, x, w, s, adapter, create):
    y = FL.modulated_conv2d(x, w, s, adapter=adapter, scale=0.2, up=True, noise=None, activation="lrelu",
                            bias=torch.ones(w.shape[0], device=x.device), backend=backend)
    gy = torch.linspace(-1, 1, y.numel(), device=x.device).reshape(y.shape)
    params = [x, w, s, adapter.A, adapter.B, adapter.B_inst]
    if not create:
        return torch.autograd.grad(y, params, gy)
    gx, = torch.autograd.grad((y * gy).sum(), x, create_graph=True)
    penalty = gx.square().sum()  # an R1-like second-order term
    return torch.autograd.grad(penalty, params)


@pytest.mark.parametrize("create", [False, True], ids=["backward", "double-backward"])
def test_triton_gradients_match_reference(kernel_device, create):
    g = torch.Generator().manual_seed(21)
    n, c_in, c_out, k = 2, 6, 5, 3

    def leaf(*s):
        return torch.randn(*s, generator=g).to(kernel_device).requires_grad_()

    x, w, s = leaf(n, c_in, 4, 5), leaf(c_out, c_in, k, k), leaf(n, c_in)
    adapter = LLoRA(leaf(c_in, 2), leaf(c_out, 2), leaf(2, 2, k * k), alpha=0.5, act="both")
    got = _grads("triton", x, w, s, adapter, create)
    want = _grads("torch", x, w, s, adapter, create)
    for i, (a, b) in enumerate(zip(got, want)):
        assert a is not None
        if i == 0 and create:  # d(penalty)/dx is 0 (piecewise-linear in x): must be exactly that
            assert b.abs().max() == 0 and a.abs().max() == 0
            continue
        assert b.abs().max() > 0 and rel_err(a, b) < 1e-5


def test_linear_gradients_match_reference(kernel_device):
    g = torch.Generator().manual_seed(22)

    def leaf(*s):
        return torch.randn(*s, generator=g).to(kernel_device).requires_grad_()

    x, w, b = leaf(3, 20), leaf(7, 20), leaf(7)
    lora = LoRA(leaf(20, 2), leaf(7, 2), alpha=0.5, bias=leaf(7))
    params = [x, w, b, lora.A, lora.B, lora.bias]
    out = {}
    for backend in ("triton", "torch"):
        y = FL.linear(x, w, b, adapter=lora, scale=0.3, activation="lrelu", backend=backend)
        gx, = torch.autograd.grad(y.square().sum(), x, create_graph=True)
        out[backend] = torch.autograd.grad(gx.square().sum() + y.sum(), params)
    for a, b in zip(out["triton"], out["torch"]):
        assert rel_err(a, b) < 1e-5


def test_no_grad_inputs_give_plain_tensor(kernel_device):
    x = torch.randn(1, 3, 4, 4, device=kernel_device)
    w = torch.randn(2, 3, 1, 1, device=kernel_device)
    s = torch.randn(1, 3, device=kernel_device)
    y = FL.modulated_conv2d(x, w, s, backend="triton")
    assert y.grad_fn is None and not y.requires_grad
