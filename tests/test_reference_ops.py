"""The torch reference backend: formulas, both modulated-conv forms, and gradients to second order."""
import itertools

import numpy as np
import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

import fastlora as fl
from fastlora import functional as FL
from tests.helpers import DT, naive_modconv, rand_adapter, rel_err

KINDS = ["lora", "llora", "left"]


def test_llora_delta_matches_explicit_sums():
    g = torch.Generator().manual_seed(0)
    c_in, c_out, r, k = 3, 4, 2, 3
    A, B, Bi = (torch.randn(*s, dtype=DT, generator=g) for s in ((c_in, r), (c_out, r), (r, r, k * k)))
    relu = lambda v: max(v, 0.0)  # noqa: E731
    for act in ("both", "inner", "none"):
        got = FL.llora_delta(A, B, Bi, 0.3, act)
        exp = np.zeros((c_out, c_in, k * k))
        for o, c, t in itertools.product(range(c_out), range(c_in), range(k * k)):
            p = 0.0
            for j in range(r):
                m = sum(float(B[o, mm] * Bi[j, mm, t]) for mm in range(r))
                p += float(A[c, j]) * (relu(m) if act != "none" else m)
            exp[o, c, t] = 0.3 * (relu(p) if act == "both" else p)
        assert np.allclose(got.reshape(c_out, c_in, -1).numpy(), exp, rtol=1e-12, atol=1e-12), act


def test_left_weights_match_spec_formulas():
    g = torch.Generator().manual_seed(1)
    W = torch.randn(4, 3, 3, 3, dtype=DT, generator=g)
    a = rand_adapter("left", 4, 3, 3, 2, act="none", gen=g)
    G = torch.zeros(4, 3, 9, dtype=DT)
    mul = torch.einsum("om,jmt->jot", a.U, a.T) + (a.P @ a.Q.T)[None]
    for o, c, t in itertools.product(range(4), range(3), range(9)):
        G[o, c, t] = sum(a.V[c, j] * mul[j, o, t] for j in range(2))
    add = (a.R @ a.S.T)  # [C_in, k*k]
    exp = W * G.reshape(4, 3, 3, 3) + add.reshape(1, 3, 3, 3)
    assert rel_err(a.adapted(W), exp) < 1e-13
    lin = rand_adapter("left", 5, 6, None, 2, gen=g)
    Wl = torch.randn(5, 6, dtype=DT, generator=g)
    assert rel_err(lin.adapted(Wl), Wl * (lin.U_out @ lin.U_in.T) + lin.A_out @ lin.A_in.T) < 1e-13


def test_upfirdn2d_matches_numpy_reference():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 5, 6, dtype=DT, generator=g)
    kern = torch.randn(4, 3, dtype=DT, generator=g)
    for up, down, pad in [(1, 1, (1, 2)), (2, 1, (2, 1, 1, 2)), (1, 2, (2, 2)), (2, 2, (-1, 2, 1, 0))]:
        got = FL.upfirdn2d(x, kern, up=up, down=down, pad=pad)
        px0, px1, py0, py1 = (pad * 2) if len(pad) == 2 else pad
        xn = x.numpy()
        u = np.zeros((2, 3, 5 * up, 6 * up))
        u[:, :, ::up, ::up] = xn
        big = np.zeros((2, 3, u.shape[2] + max(py0, 0) + max(py1, 0), u.shape[3] + max(px0, 0) + max(px1, 0)))
        big[:, :, max(py0, 0): max(py0, 0) + u.shape[2], max(px0, 0): max(px0, 0) + u.shape[3]] = u
        big = big[:, :, max(-py0, 0): big.shape[2] - max(-py1, 0), max(-px0, 0): big.shape[3] - max(-px1, 0)]
        kh, kw = kern.shape
        oh, ow = big.shape[2] - kh + 1, big.shape[3] - kw + 1
        out = np.zeros((2, 3, oh, ow))
        kf = kern.numpy()
        for i, j in itertools.product(range(oh), range(ow)):  # true convolution: flipped kernel
            out[:, :, i, j] = (big[:, :, i:i + kh, j:j + kw] * kf[::-1, ::-1]).sum((2, 3))
        assert np.allclose(got.numpy(), out[:, :, ::down, ::down], atol=1e-12), (up, down, pad)


@pytest.mark.parametrize("kind", [None] + KINDS)
@pytest.mark.parametrize("k,up,down", [(3, False, False), (3, True, False), (3, False, True), (1, False, False),
                                       (1, True, False), (1, False, True)])
@pytest.mark.parametrize("demodulate", [True, False])
def test_modconv_forms_agree_with_naive(kind, k, up, down, demodulate):
    g = torch.Generator().manual_seed(3)
    n, c_in, c_out = 3, 4, 5
    x = torch.randn(n, c_in, 7, 6, dtype=DT, generator=g)
    w = torch.randn(c_out, c_in, k, k, dtype=DT, generator=g)
    s = torch.randn(n, c_in, dtype=DT, generator=g)
    a = rand_adapter(kind, c_out, c_in, k, 2, act="both", gen=g) if kind else None
    kw = dict(adapter=a, scale=0.4, demodulate=demodulate, up=up, down=down, backend="torch")
    shared = FL.modulated_conv2d(x, w, s, form="shared", **kw)
    grouped = FL.modulated_conv2d(x, w, s, form="grouped", **kw)
    naive = naive_modconv(x, 0.4 * FL.adapted_weight(w, a), s, demodulate, up, down)
    assert shared.shape == naive.shape
    assert rel_err(shared, naive) < 1e-12 and rel_err(grouped, naive) < 1e-12


@pytest.mark.parametrize("form", ["shared", "grouped"])
@pytest.mark.parametrize("up,down", [(False, False), (True, False), (False, True)])
def test_task_ids_render_each_sample_with_its_own_task(form, up, down):
    g = torch.Generator().manual_seed(4)
    n, c_in, c_out = 5, 3, 4
    x = torch.randn(n, c_in, 6, 6, dtype=DT, generator=g)
    w = torch.randn(c_out, c_in, 3, 3, dtype=DT, generator=g)
    s = torch.randn(n, c_in, dtype=DT, generator=g)
    adapters = [rand_adapter("llora", c_out, c_in, 3, 2, gen=g), None, rand_adapter("left", c_out, c_in, 3, 1, gen=g)]
    ids = torch.tensor([2, 0, 1, 0, 2])
    noise = torch.randn(n, 1, *FL.modconv_output_size(6, 6, 3, up, down), dtype=DT, generator=g)
    bias = torch.randn(c_out, dtype=DT, generator=g)
    out = FL.modulated_conv2d(x, w, s, adapter=adapters, task_ids=ids, up=up, down=down, noise=noise, bias=bias,
                              activation="lrelu", backend="torch", form=form)
    for i in range(n):
        one = FL.modulated_conv2d(x[i:i + 1], w, s[i:i + 1], adapter=adapters[ids[i]], up=up, down=down,
                                  noise=noise[i:i + 1], bias=bias, activation="lrelu", backend="torch")
        assert rel_err(out[i:i + 1], one) < 1e-12


def test_linear_task_ids_and_equal_lr():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 6, dtype=DT, generator=g)
    w = torch.randn(3, 6, dtype=DT, generator=g)
    b = torch.randn(3, dtype=DT, generator=g)
    adapters = [rand_adapter("lora", 3, 6, None, 2, gen=g), rand_adapter("left", 3, 6, None, 2, gen=g), None]
    ids = torch.tensor([1, 0, 2, 1])
    out = FL.linear(x, w, b, adapter=adapters, task_ids=ids, scale=0.3, bias_scale=0.01, activation="lrelu",
                    backend="torch")
    for i in range(4):
        a = adapters[ids[i]]
        wh, bh = FL.adapted_weight(w, a), FL.adapted_bias(b, a)
        exp = torch.nn.functional.leaky_relu(x[i] @ (0.3 * wh).T + 0.01 * bh, 0.2) * 2 ** 0.5
        assert rel_err(out[i], exp) < 1e-12


def test_fused_leaky_relu():
    x = torch.randn(2, 3, 4, 4, dtype=DT)
    b = torch.randn(3, dtype=DT)
    y = FL.fused_leaky_relu(x, b)
    z = x + b[None, :, None, None]
    assert torch.allclose(y, torch.where(z > 0, z, 0.2 * z) * 2 ** 0.5)


# --------------------------------------------------------------------------- gradients (float64, to 2nd order)

def _leaf(*s):
    return (torch.randn(*s, dtype=DT) * 0.7).requires_grad_()


@pytest.mark.parametrize("k,up,down", [(3, False, False), (3, True, False), (3, False, True), (1, False, False),
                                       (1, True, False), (1, False, True)])
@pytest.mark.parametrize("demodulate", [True, False])
def test_modconv_gradcheck_and_gradgradcheck(k, up, down, demodulate):
    torch.manual_seed(6)
    x, w, s = _leaf(2, 2, 4, 4), _leaf(3, 2, k, k), _leaf(2, 2)
    A, B, Bi = _leaf(2, 2), _leaf(3, 2), _leaf(2, 2, k * k)
    noise = _leaf(2, 1, *FL.modconv_output_size(4, 4, k, up, down))
    bias = _leaf(3)

    def f(x, w, s, A, B, Bi, noise, bias):
        return FL.modulated_conv2d(x, w, s, adapter=fl.LLoRA(A, B, Bi, 0.5, "none"), scale=0.6,
                                   demodulate=demodulate, up=up, down=down, noise=noise, bias=bias,
                                   activation="lrelu", backend="torch")

    inputs = (x, w, s, A, B, Bi, noise, bias)
    assert gradcheck(f, inputs)
    assert gradgradcheck(f, inputs)


@pytest.mark.parametrize("kind", KINDS)
def test_adapter_kinds_gradcheck(kind):
    torch.manual_seed(7)
    tensors = rand_adapter(kind, 3, 2, 3, 2, act="both" if kind == "llora" else "inner", requires_grad=True)
    fields = [t for t in tensors.tensors()]
    x, w, s = _leaf(2, 2, 4, 4), _leaf(3, 2, 3, 3), _leaf(2, 2)

    def f(x, s, *ts):
        import dataclasses

        names = [fd.name for fd in dataclasses.fields(tensors) if isinstance(getattr(tensors, fd.name), torch.Tensor)]
        a = dataclasses.replace(tensors, **dict(zip(names, ts)))
        return FL.modulated_conv2d(x, w, s, adapter=a, backend="torch")

    assert gradcheck(f, (x, s, *fields))
    assert gradgradcheck(f, (x, s, *fields))


def test_linear_conv_upfirdn_gradcheck():
    torch.manual_seed(8)
    x, w, b = _leaf(3, 4), _leaf(5, 4), _leaf(5)
    A, B, bo = _leaf(4, 2), _leaf(5, 2), _leaf(5)
    f = lambda x, w, b, A, B, bo: FL.linear(x, w, b, adapter=fl.LoRA(A, B, 2.0, bo), scale=0.5,  # noqa: E731
                                            bias_scale=0.1, activation="lrelu", backend="torch")
    assert gradcheck(f, (x, w, b, A, B, bo)) and gradgradcheck(f, (x, w, b, A, B, bo))
    xc, wc, bc = _leaf(2, 2, 6, 6), _leaf(3, 2, 3, 3), _leaf(3)
    for down in (False, True):
        g = lambda xc, wc, bc: FL.conv2d(xc, wc, bc, scale=0.5, down=down, activation="lrelu")  # noqa: E731
        assert gradcheck(g, (xc, wc, bc)) and gradgradcheck(g, (xc, wc, bc))
    k = torch.tensor([1.0, 3.0, 3.0, 1.0], dtype=DT)
    h = lambda x: FL.upfirdn2d(x, torch.outer(k, k), up=2, down=1, pad=(2, 1))  # noqa: E731
    assert gradcheck(h, (xc,)) and gradgradcheck(h, (xc,))


# --------------------------------------------------------------------------- bad input

def test_bad_inputs_name_expected_and_got():
    x = torch.randn(2, 4, 5, 5)
    w = torch.randn(3, 4, 3, 3)
    s = torch.randn(2, 4)
    with pytest.raises(ValueError, match=r"style must be \[N, C_in\] = \[2, 4\]"):
        FL.modulated_conv2d(x, w, torch.randn(2, 5))
    with pytest.raises(ValueError, match="x has 4 channels but weight expects C_in=5"):
        FL.modulated_conv2d(x, torch.randn(3, 5, 3, 3), s)
    with pytest.raises(ValueError, match="float64 but x is torch.float32"):
        FL.modulated_conv2d(x, w.double(), s)
    with pytest.raises(ValueError, match="up and down"):
        FL.modulated_conv2d(x, w, s, up=True, down=True)
    with pytest.raises(ValueError, match=r"LLoRA does not fit a conv of weight \[3, 4, 3, 3\]"):
        FL.modulated_conv2d(x, w, s, adapter=fl.LLoRA(torch.randn(5, 1), torch.randn(3, 1), torch.randn(1, 1, 9)))
    with pytest.raises(ValueError, match="task_ids must lie in"):
        FL.modulated_conv2d(x, w, s, adapter=[None, None], task_ids=torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="task_ids"):
        FL.modulated_conv2d(x, w, s, adapter=[None], task_ids=torch.tensor([0.0, 0.0]))
    with pytest.raises(ValueError, match="needs task_ids"):
        FL.modulated_conv2d(x, w, s, adapter=[None, None])
    with pytest.raises(ValueError, match="act must be one of"):
        fl.LLoRA(torch.randn(4, 1), torch.randn(3, 1), torch.randn(1, 1, 9), act="relu")
    with pytest.raises(ValueError, match="backend must be one of"):
        FL.modulated_conv2d(x, w, s, backend="cuda")
    with pytest.raises(ValueError, match=r"noise must broadcast"):
        FL.modulated_conv2d(x, w, s, noise=torch.randn(2, 1, 4, 4))


# --------------------------------------------------------------------------- properties on random shapes

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 3), c_in=st.integers(1, 5), c_out=st.integers(1, 5), h=st.integers(2, 9),
       w=st.integers(2, 9), k=st.sampled_from([1, 3]), mode=st.sampled_from(["plain", "up", "down"]),
       demodulate=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_modconv_shapes_and_forms_on_random_shapes(n, c_in, c_out, h, w, k, mode, demodulate, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c_in, h, w, dtype=DT, generator=g)
    wt = torch.randn(c_out, c_in, k, k, dtype=DT, generator=g)
    s = torch.randn(n, c_in, dtype=DT, generator=g)
    kw = dict(up=mode == "up", down=mode == "down", demodulate=demodulate, backend="torch")
    shared = FL.modulated_conv2d(x, wt, s, form="shared", **kw)
    grouped = FL.modulated_conv2d(x, wt, s, form="grouped", **kw)
    assert shared.shape == (n, c_out, *FL.modconv_output_size(h, w, k, kw["up"], kw["down"]))
    assert rel_err(shared, grouped) < 1e-12


def test_blur_kernel_is_shared_and_not_an_inference_tensor():
    """Built once per (taps, device, dtype), so a CUDA graph captured after a warm-up copies nothing from the
    host; made under inference mode (the capture's warm-up) it must still serve a later autograd forward."""
    with torch.inference_mode():
        k = FL.make_blur_kernel(taps=(1, 2, 1), dtype=torch.float64)
    assert not k.is_inference() and FL.make_blur_kernel(taps=(1.0, 2.0, 1.0), dtype=torch.float64) is k
    exp = torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64)
    assert torch.equal(k, torch.outer(exp, exp) / 16)
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    FL.upfirdn2d(x, k, pad=(1, 1)).sum().backward()
    assert x.grad is not None and FL.make_blur_kernel(dtype=torch.float32).dtype == torch.float32
