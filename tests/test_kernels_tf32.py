"""TF32 on the CPU: the fused kernels' fp32 dots with TF32 allowed, in Triton's interpreter under a model of
the tensor cores.

Hopper's tensor cores read an fp32 operand's top 19 bits (TF32) and ignore the rest: a truncation that shrinks
every product by 2^-11 on average, coherently, so the bias adds up across layers (first GPU session: 1.5e-2
relative error at the 256 px generator's output against 2e-3 for PyTorch). `kernels.common.mma` therefore rounds
fp32 operands to TF32 before the dot. The interpreter computes dots in fp32; the fixture below makes it truncate
operands like the hardware (or round them, for the comparison) whenever a dot asks for TF32.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import triton
import triton.language as tl

from fastlora import functional as FL
from kernels import common
from tests.test_kernels_backward import _leaves, _tensors, rel
from tests.test_kernels_forward import conv_adapter, linear_adapter, to64


def _to_tf32(x: np.ndarray, how: str) -> np.ndarray:
    """fp32 -> TF32 in numpy: "truncate" (what the tensor cores read) or "round" (nearest, ties away)."""
    bits = x.astype(np.float32).view(np.uint32).copy()
    if how == "round":
        bits = bits + np.uint32(0x1000)
    return (bits & np.uint32(0xFFFFE000)).view(np.float32)


@pytest.fixture
def tensor_cores(monkeypatch):
    """Set the interpreter's TF32 operand model ("truncate" or "round") and let fp32 dots ask for TF32."""
    from triton.runtime import interpreter

    state = {"how": "truncate"}
    plain = interpreter.InterpreterBuilder.create_dot

    def create_dot(self, a, b, d, input_precision, *rest):
        if str(input_precision).upper().endswith("TF32"):  # not "tf32x3", not "ieee"
            a = interpreter.TensorHandle(_to_tf32(a.data, state["how"]) if a.data.dtype == np.float32 else a.data,
                                         a.dtype.scalar)
            b = interpreter.TensorHandle(_to_tf32(b.data, state["how"]) if b.data.dtype == np.float32 else b.data,
                                         b.dtype.scalar)
        return plain(self, a, b, d, input_precision, *rest)

    monkeypatch.setattr(interpreter.InterpreterBuilder, "create_dot", create_dot)
    monkeypatch.setattr(common, "dot_precision", lambda dtype, device: "tf32" if dtype == torch.float32 else "ieee")
    return state


@triton.jit
def _round_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    m = offs < n
    tl.store(y_ptr + offs, common.tf32_round(tl.load(x_ptr + offs, mask=m)), mask=m)


def test_tf32_round_is_nearest_ties_away():
    g = np.random.default_rng(0)
    x = (g.standard_normal(200) * 10.0 ** g.integers(-30, 30, 200)).astype(np.float32)
    ties = (g.integers(1, 2 ** 19, 20, dtype=np.uint32) << np.uint32(13)) | np.uint32(0x1000)  # exactly halfway
    x = np.concatenate([x, ties.view(np.float32), -ties.view(np.float32),
                        np.array([0.0, -0.0, 1.0, np.inf, -np.inf, 3.0e38], np.float32)])
    y = torch.empty(len(x))
    _round_kernel[(1,)](torch.from_numpy(x), y, len(x), BLOCK=512)
    want = _to_tf32(x, "round")
    assert np.array_equal(y.numpy().view(np.uint32), want.view(np.uint32))
    assert np.all(np.abs(want[:200] - x[:200]) <= np.abs(x[:200]) * 2.0 ** -11)


def _modconv(kind: str, activation, seed: int = 2):
    """Fused forward and gradients of a 3x3 modulated conv in fp32, and the float64 reference's."""
    adapter = conv_adapter(kind, 40, 24, 3, 4, "cpu", torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(seed)
    x, w = torch.randn(2, 24, 7, 6, generator=g), torch.randn(40, 24, 3, 3, generator=g)
    s, bias = torch.randn(2, 24, generator=g) + 1.0, torch.randn(40, generator=g)
    gy = torch.randn(2, 40, 7, 6, generator=g)
    out = []
    for backend, cast, ad in (("triton", torch.Tensor.float, _leaves(adapter)),
                              ("torch", torch.Tensor.double, _leaves(to64(adapter)))):
        ts = [cast(t).requires_grad_() for t in (x, w, s, bias)]
        y = FL.modulated_conv2d(ts[0], ts[1], ts[2], adapter=ad, scale=(24 * 9) ** -0.5, bias=ts[3],
                                activation=activation, backend=backend)
        out.append([y.detach()] + list(torch.autograd.grad(y, ts + _tensors(ad), cast(gy))))
    return out


@pytest.mark.parametrize("kind", ["llora-both", "lora"])
def test_fp32_operands_are_rounded_before_the_tensor_cores(tensor_cores, kind):
    """Truncating hardware and rounding hardware compute the same bits: the kernels hand them operands that are
    TF32 values already. The error is that of rounding: forward and gradients ~3e-4 without an activation."""
    got, ref = _modconv(kind, None)
    tensor_cores["how"] = "round"
    again, _ = _modconv(kind, None)
    for a, b in zip(got, again):
        assert torch.equal(a, b)
    errs = [rel(a, b) for a, b in zip(got, ref)]
    assert max(errs) < 1e-3 and errs[0] > 1e-5, errs  # TF32 did run (fp32 alone is ~1e-7)


def test_tf32_gradients_through_leaky_relu(tensor_cores):
    """With the leaky ReLU the forward stays at TF32's error but gradients grow to ~1e-2: outputs within
    rounding of 0 take the other slope (the GPU tests' limits say so)."""
    got, ref = _modconv("llora-both", "lrelu")
    errs = [rel(a, b) for a, b in zip(got, ref)]
    assert errs[0] < 1e-3 and max(errs) < 3e-2, errs


def test_tf32_linear(tensor_cores):
    g = torch.Generator().manual_seed(4)
    ad = linear_adapter("lora-bias", 64, 96, 4, "cpu", g)
    x, w, b = torch.randn(6, 96, generator=g), torch.randn(64, 96, generator=g), torch.randn(64, generator=g)
    kw = dict(scale=96 ** -0.5, bias_scale=0.01)
    runs = []
    for how in ("truncate", "round"):
        tensor_cores["how"] = how
        runs.append(FL.linear(x, w, b, adapter=ad, backend="triton", **kw))
    ref = FL.linear(x.double(), w.double(), b.double(), adapter=to64(ad), backend="torch", **kw)
    assert torch.equal(runs[0], runs[1]) and 1e-6 < rel(runs[0], ref) < 1e-3


@triton.jit
def _unrounded(v):
    return v


def test_tf32_whole_generator(tensor_cores, monkeypatch, capsys):
    """Every TF32 dot of a generator forward (mapping, styles, convs, ToRGB) gets rounded operands: the same bits
    under truncating and rounding tensor cores, and rounding-level error against float64, several times smaller
    than with the operands left to the hardware's truncation (printed with -s)."""
    import copy

    import fastlora
    from colorgan import Generator

    torch.manual_seed(0)
    G = Generator(16, style_dim=64, n_mlp=4, channels={4: 64, 8: 64, 16: 32})
    fastlora.add_task(G, "t", fastlora.AdapterConfig(kind="llora", rank=2, act="inner"))
    fastlora.set_task(G, "t")
    with torch.no_grad():
        for p in fastlora.task_parameters(G, "t"):
            p.add_(torch.randn_like(p) * 0.05)
        z = torch.randn(2, 64)
        ref = copy.deepcopy(G).double()(z.double(), backend="torch", noise_mode="const")
        truncated = G(z, backend="triton", noise_mode="const")
        tensor_cores["how"] = "round"
        rounded = G(z, backend="triton", noise_mode="const")
        tensor_cores["how"] = "truncate"
        monkeypatch.setattr(common, "tf32_round", _unrounded)  # the kernels before the rounding
        unrounded = G(z, backend="triton", noise_mode="const")
    err, err_unrounded = rel(truncated, ref), rel(unrounded, ref)
    with capsys.disabled():
        print(f"\nTF32 16 px generator vs float64: operands rounded {err:.2e}, truncated {err_unrounded:.2e}")
    assert torch.equal(truncated, rounded)
    assert 1e-5 < err < 2e-3 and err_unrounded > 3 * err, (err, err_unrounded)
