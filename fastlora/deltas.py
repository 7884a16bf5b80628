"""The adapters' weight updates as plain tensor math (docs/design.md §3): LoRA's ΔW = α·B·Aᵀ, CoLoR-GAN's nested
"LoRA in LoRA" ΔW and LFS-GAN's LeFT weights. `fastlora.adapters` and `fastlora.functional` both use them."""
from __future__ import annotations

import math

import torch
from torch import Tensor

ACTS = ("both", "inner", "none")  # LLoRA activations: ReLU inside and outside, inside only, none
LEFT_ACTS = ("inner", "none")


def lora_delta(A: Tensor, B: Tensor, alpha: float) -> Tensor:
    """ΔW = α·B·Aᵀ, shape [d_out, d_in]."""
    return alpha * (B @ A.transpose(0, 1))


def llora_delta(A: Tensor, B: Tensor, B_inst: Tensor, alpha: float, act: str = "inner") -> Tensor:
    """CoLoR-GAN's nested update ΔW, shape [C_out, C_in, k, k] (docs/design.md §3).

    M[j,o,t] = Σ_m B[o,m]·B_inst[j,m,t]; N = φ_in(M); P[o,c,t] = Σ_j A[c,j]·N[j,o,t];
    ΔW = α·φ_out(P). act "both": φ_in = φ_out = ReLU; "inner": φ_in = ReLU; "none": neither.
    The outer ReLU's derivative at exactly 0 is taken as 1 (see below); values are unchanged.
    """
    if act not in ACTS:
        raise ValueError(f"act must be one of {ACTS}, got {act!r}")
    k = math.isqrt(B_inst.shape[2])
    M = torch.einsum("om,jmt->jot", B, B_inst)
    N = torch.relu(M) if act in ("both", "inner") else M
    P = torch.einsum("cj,jot->oct", A, N)
    # Outer ReLU with ReLU'(0) := 1: the default initialisation (A = 0) puts every P at exactly 0, where
    # torch.relu would pass no gradient and the adapter would never train; the forward value is the same.
    dW = torch.where(P >= 0, P, torch.zeros_like(P)) if act == "both" else P
    return (alpha * dW).reshape(B.shape[0], A.shape[0], k, k)


def left_linear_weight(W: Tensor, U_out: Tensor, U_in: Tensor, A_out: Tensor, A_in: Tensor) -> Tensor:
    """LeFT linear: Ŵ = W ⊙ (U_out·U_inᵀ) + A_out·A_inᵀ."""
    return W * (U_out @ U_in.transpose(0, 1)) + A_out @ A_in.transpose(0, 1)


def left_conv_weight(W: Tensor, U: Tensor, T: Tensor, P: Tensor, Q: Tensor, V: Tensor, R: Tensor, S: Tensor,
                     act: str = "inner") -> Tensor:
    """LeFT conv: mul = U·T + P·Qᵀ, N = φ(mul), G[o,c,t] = Σ_j V[c,j]·N[j,o,t], Ŵ = W ⊙ G + (R·Sᵀ)[c,t]."""
    if act not in LEFT_ACTS:
        raise ValueError(f"LeFT act must be one of {LEFT_ACTS}, got {act!r}")
    c_out, c_in, kh, kw = W.shape
    mul = torch.einsum("om,jmt->jot", U, T) + (P @ Q.transpose(0, 1)).unsqueeze(0)
    N = torch.relu(mul) if act == "inner" else mul
    G = torch.einsum("cj,jot->oct", V, N).reshape(c_out, c_in, kh, kw)
    add = (R @ S.transpose(0, 1)).reshape(1, c_in, kh, kw)
    return W * G + add
