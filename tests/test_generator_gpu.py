"""GPU-only (`-m gpu`; skipped without CUDA): the whole 256 px generator with a CoLoR-GAN task (LLoRA rank 1,
act inner, non-zero adapters), fused backend against the float64 reference, forward and gradients.

Error accumulates over 14 modulated convs and the mapping network, so each check allows the larger of a fixed
limit and twice the error of the PyTorch backend in the same precision: the fused path must be no worse than
PyTorch itself. Gradients allow four times: through the leaky ReLUs their error is dominated by the few
pre-activations within rounding of 0 that take the other slope, a count that varies run to run and path to path
(first GPU session: fp32 gradient of one adapter tensor 1.7e-3 fused, 6.6e-4 PyTorch, both against float64)."""
from __future__ import annotations

import contextlib
import copy

import pytest
import torch

import fastlora
from colorgan import Generator

pytestmark = pytest.mark.gpu

FWD_TOL = {"fp32": 1e-4, "tf32": 5e-3, "bf16": 3e-2}
GRAD_TOL = {"fp32": 1e-4, "bf16": 5e-2}
BATCH = 4


def rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    o = out.detach().double()
    assert torch.isfinite(o).all(), "non-finite output"
    den = float(ref.norm())
    return float((o - ref).norm()) / (den if den > 0 else 1.0)


@contextlib.contextmanager
def precision(prec: str):
    """fp32 with TF32 off, fp32 with TF32 on, or bf16 autocast (the training path's `--amp bf16`)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = prec == "tf32"
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16) if prec == "bf16" else contextlib.nullcontext():
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture(scope="module")
def models():
    """(G on the GPU in fp32, its float64 copy): 256 px, default channels, one task, frozen base."""
    torch.manual_seed(0)
    G = Generator(256)
    fastlora.add_task(G, "task", fastlora.AdapterConfig(kind="llora", rank=1, act="inner"))
    fastlora.freeze_base(G)
    fastlora.set_task(G, "task")
    with torch.no_grad():
        for p in fastlora.task_parameters(G, "task"):
            p.add_(torch.randn_like(p) * 0.05)  # adapters that start at zero would hide adapter errors
    G = G.cuda()
    return G, copy.deepcopy(G).double()


def _grads(G, z: torch.Tensor, gy: torch.Tensor, backend: str) -> list:
    zz = z.clone().requires_grad_(True)
    params = fastlora.task_parameters(G, "task")
    img = G(zz, backend=backend, noise_mode="const")
    return list(torch.autograd.grad((img.to(gy.dtype) * gy).sum(), [zz, *params]))


@pytest.mark.parametrize("prec", list(FWD_TOL))
def test_gpu_generator_256_forward(models, prec):
    G, G64 = models
    z = torch.randn(BATCH, G.style_dim, device="cuda")
    with torch.no_grad():
        ref = G64(z.double(), backend="torch", noise_mode="const")
        with precision(prec):
            fused = G(z, backend="triton", noise_mode="const")
            torch_same = G(z, backend="torch", noise_mode="const")
    err, err_torch = rel(fused, ref), rel(torch_same, ref)
    limit = max(FWD_TOL[prec], 2 * err_torch)
    assert err < limit, f"{prec}: fused rel err {err:.3g}, torch {err_torch:.3g}, limit {limit:.3g}"


@pytest.mark.parametrize("prec", list(GRAD_TOL))
def test_gpu_generator_256_gradients(models, prec):
    """Gradients of <G(z), gy> with respect to z and every adapter tensor (the training path's first order)."""
    G, G64 = models
    z = torch.randn(BATCH, G.style_dim, device="cuda")
    gy = torch.randn(BATCH, 3, 256, 256, device="cuda", dtype=torch.float64)
    ref = _grads(G64, z.double(), gy, "torch")
    with precision(prec):
        fused = _grads(G, z, gy.float(), "triton")
        torch_same = _grads(G, z, gy.float(), "torch")
    for i, (f, t, r) in enumerate(zip(fused, torch_same, ref)):
        err, err_torch = rel(f, r), rel(t, r)
        limit = max(GRAD_TOL[prec], 4 * err_torch)
        assert err < limit, f"{prec} gradient {i}: fused rel err {err:.3g}, torch {err_torch:.3g}, limit {limit:.3g}"


def test_gpu_generator_task_at_half_strength_forward():
    """A task kept at strength 0.5 (`fastlora.set_strength`: LeFT's linear factors gain a rank, the conv LLoRA's
    A is scaled) through the fused backend, fp32, against the float64 reference of the same strength."""
    torch.manual_seed(1)
    G = Generator(64)
    fastlora.add_task(G, "task", fastlora.AdapterConfig(kind="left-linear", rank=1))
    fastlora.freeze_base(G)
    with torch.no_grad():
        for p in fastlora.task_parameters(G, "task"):
            p.add_(torch.randn_like(p) * 0.05)
    fastlora.set_strength(G, "task", 0.5)
    fastlora.set_task(G, "task")
    G = G.cuda()
    G64 = copy.deepcopy(G).double()
    z = torch.randn(BATCH, G.style_dim, device="cuda")
    with torch.no_grad(), precision("fp32"):
        ref = G64(z.double(), backend="torch", noise_mode="const")
        err = rel(G(z, backend="triton", noise_mode="const"), ref)
        err_torch = rel(G(z, backend="torch", noise_mode="const"), ref)
    limit = max(FWD_TOL["fp32"], 2 * err_torch)
    assert err < limit, f"fused rel err {err:.3g}, torch {err_torch:.3g}, limit {limit:.3g}"
