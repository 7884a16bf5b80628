"""Adapter kinds: small immutable holders of adapter tensors.

Each kind knows how to build its adapted weight from a base weight (in stored,
pre-equalised-LR units) and how many parameters it stores. The formulas are those
of docs/design.md §3; shapes are checked against the layer with `check(weight)`.

* `LoRA`  — W + α·B·Aᵀ (linear; on a conv, A spans C_in·k·k, the PEFT form).
* `LLoRA` — CoLoR-GAN's nested "LoRA in LoRA" for conv kernels.
* `LeFT`  — LFS-GAN's multiplicative + additive factorisation (linear and conv).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Optional, Union

from torch import Tensor

from fastlora.deltas import ACTS, LEFT_ACTS, left_conv_weight, left_linear_weight, llora_delta, lora_delta



def _shape(t: Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def _tensor_fields(obj) -> list[Tensor]:
    return [v for f in fields(obj) if isinstance(v := getattr(obj, f.name), Tensor)]


class _AdapterBase:
    """Shared helpers of the adapter kinds."""

    def tensors(self) -> list[Tensor]:
        return _tensor_fields(self)

    def num_params(self) -> int:
        """Number of stored values (what one task costs on disk, per layer)."""
        return sum(t.numel() for t in self.tensors())

    def delta(self, weight: Tensor) -> Tensor:
        """Ŵ − W for this base weight (for LoRA/LLoRA it does not depend on W)."""
        return self.adapted(weight) - weight

    def adapted_bias(self, bias: Optional[Tensor]) -> Optional[Tensor]:
        return bias

    def _check_common(self, weight: Tensor) -> None:
        for t in self.tensors():
            _require(t.device == weight.device,
                     f"{type(self).__name__}: adapter tensors are on {t.device} but the layer weight is on {weight.device}")
            _require(t.is_floating_point(), f"{type(self).__name__}: adapter tensors must be floating point, got {t.dtype}")


@dataclass(frozen=True, eq=False)
class LoRA(_AdapterBase):
    """Low-rank update Ŵ = W + α·B·Aᵀ.

    A: [d_in, r], B: [d_out, r]; `bias` an optional additive bias offset [d_out].
    For a conv weight [C_out, C_in, k, k], d_in = C_in·k·k (PEFT's conv LoRA).
    """

    A: Tensor
    B: Tensor
    alpha: float = 1.0
    bias: Optional[Tensor] = None

    def __post_init__(self) -> None:
        _require(self.A.dim() == 2 and self.B.dim() == 2,
                 f"LoRA: expected A [d_in, r] and B [d_out, r], got A {_shape(self.A)}, B {_shape(self.B)}")
        _require(self.A.shape[1] == self.B.shape[1],
                 f"LoRA: A and B must share the rank, got A {_shape(self.A)}, B {_shape(self.B)}")
        if self.bias is not None:
            _require(self.bias.shape == (self.B.shape[0],),
                     f"LoRA: bias offset must be [{self.B.shape[0]}], got {_shape(self.bias)}")

    @property
    def rank(self) -> int:
        return self.A.shape[1]

    def check(self, weight: Tensor) -> None:
        self._check_common(weight)
        d_out, d_in = weight.shape[0], weight[0].numel()
        _require(self.A.shape[0] == d_in and self.B.shape[0] == d_out,
                 f"LoRA does not fit a layer of weight {_shape(weight)}: expected A [{d_in}, r] and B [{d_out}, r], "
                 f"got A {_shape(self.A)}, B {_shape(self.B)}")

    def delta(self, weight: Tensor) -> Tensor:
        return lora_delta(self.A, self.B, self.alpha).reshape(weight.shape)

    def adapted(self, weight: Tensor) -> Tensor:
        return weight + self.delta(weight)

    def adapted_bias(self, bias: Optional[Tensor]) -> Optional[Tensor]:
        if self.bias is None:
            return bias
        return self.bias if bias is None else bias + self.bias


@dataclass(frozen=True, eq=False)
class LLoRA(_AdapterBase):
    """CoLoR-GAN's "LoRA in LoRA" for conv kernels (docs/design.md §3).

    A: [C_in, r], B: [C_out, r], B_inst: [r, r, k·k]; act: "both" (published: ReLU
    inside and outside), "inner" (ReLU inside only, still low-rank) or "none".
    """

    A: Tensor
    B: Tensor
    B_inst: Tensor
    alpha: float = 1.0
    act: str = "inner"

    def __post_init__(self) -> None:
        _require(self.act in ACTS, f"LLoRA: act must be one of {ACTS}, got {self.act!r}")
        _require(self.A.dim() == 2 and self.B.dim() == 2 and self.B_inst.dim() == 3,
                 f"LLoRA: expected A [C_in, r], B [C_out, r], B_inst [r, r, k*k], got A {_shape(self.A)}, "
                 f"B {_shape(self.B)}, B_inst {_shape(self.B_inst)}")
        r = self.A.shape[1]
        kk = self.B_inst.shape[2]
        _require(self.B.shape[1] == r and self.B_inst.shape[:2] == (r, r) and math.isqrt(kk) ** 2 == kk,
                 f"LLoRA: inconsistent rank or kernel: A {_shape(self.A)}, B {_shape(self.B)}, B_inst {_shape(self.B_inst)} "
                 f"(expected B [C_out, {r}], B_inst [{r}, {r}, k*k])")

    @property
    def rank(self) -> int:
        return self.A.shape[1]

    @property
    def kernel_size(self) -> int:
        return math.isqrt(self.B_inst.shape[2])

    def check(self, weight: Tensor) -> None:
        self._check_common(weight)
        _require(weight.dim() == 4, f"LLoRA applies to conv weights [C_out, C_in, k, k], got {_shape(weight)}")
        c_out, c_in, kh, kw = weight.shape
        k = self.kernel_size
        _require((self.A.shape[0], self.B.shape[0], k, k) == (c_in, c_out, kh, kw),
                 f"LLoRA does not fit a conv of weight {_shape(weight)}: expected A [{c_in}, r], B [{c_out}, r], "
                 f"B_inst [r, r, {kh * kw}], got A {_shape(self.A)}, B {_shape(self.B)}, B_inst {_shape(self.B_inst)}")

    def delta(self, weight: Optional[Tensor] = None) -> Tensor:
        return llora_delta(self.A, self.B, self.B_inst, self.alpha, self.act)

    def adapted(self, weight: Tensor) -> Tensor:
        return weight + self.delta(weight)


@dataclass(frozen=True, eq=False)
class LeFT(_AdapterBase):
    """LFS-GAN's LeFT factorisation (docs/design.md §3), linear or conv.

    Linear (use `LeFT.linear`): Ŵ = W ⊙ (U_out·U_inᵀ) + A_out·A_inᵀ, b̂ = b ⊙ b_mul + b_add.
    Conv (use `LeFT.conv`): mul = U·T + P·Qᵀ, N = φ(mul), G = V·N, Ŵ = W ⊙ G + R·Sᵀ
    with U [C_out, r], T [r, r, k·k], P [C_out, r], Q [k·k, r], V [C_in, r], R [C_in, r], S [k·k, r].
    """

    U_out: Optional[Tensor] = None
    U_in: Optional[Tensor] = None
    A_out: Optional[Tensor] = None
    A_in: Optional[Tensor] = None
    b_mul: Optional[Tensor] = None
    b_add: Optional[Tensor] = None
    U: Optional[Tensor] = None
    T: Optional[Tensor] = None
    P: Optional[Tensor] = None
    Q: Optional[Tensor] = None
    V: Optional[Tensor] = None
    R: Optional[Tensor] = None
    S: Optional[Tensor] = None
    act: str = "inner"

    _LINEAR = ("U_out", "U_in", "A_out", "A_in")
    _CONV = ("U", "T", "P", "Q", "V", "R", "S")

    @classmethod
    def linear(cls, U_out: Tensor, U_in: Tensor, A_out: Tensor, A_in: Tensor,
               b_mul: Optional[Tensor] = None, b_add: Optional[Tensor] = None) -> "LeFT":
        return cls(U_out=U_out, U_in=U_in, A_out=A_out, A_in=A_in, b_mul=b_mul, b_add=b_add)

    @classmethod
    def conv(cls, U: Tensor, T: Tensor, P: Tensor, Q: Tensor, V: Tensor, R: Tensor, S: Tensor,
             act: str = "inner") -> "LeFT":
        return cls(U=U, T=T, P=P, Q=Q, V=V, R=R, S=S, act=act)

    def __post_init__(self) -> None:
        has_lin = [getattr(self, n) is not None for n in self._LINEAR]
        has_conv = [getattr(self, n) is not None for n in self._CONV]
        _require((all(has_lin) and not any(has_conv)) or (all(has_conv) and not any(has_lin)),
                 "LeFT: give either all of U_out, U_in, A_out, A_in (linear) or all of U, T, P, Q, V, R, S (conv)")
        _require(self.act in LEFT_ACTS, f"LeFT: act must be one of {LEFT_ACTS}, got {self.act!r}")
        if self.is_conv:
            r = self.U.shape[1]
            kk = self.Q.shape[0]
            ok = (self.T.shape == (r, r, kk) and self.P.shape == (self.U.shape[0], r) and self.Q.shape == (kk, r)
                  and self.V.shape[1] == r and self.R.shape == (self.V.shape[0], r) and self.S.shape == (kk, r)
                  and math.isqrt(kk) ** 2 == kk)
            _require(ok, "LeFT conv: expected U [C_out, r], T [r, r, k*k], P [C_out, r], Q [k*k, r], V [C_in, r], "
                         "R [C_in, r], S [k*k, r]; got " + ", ".join(f"{n} {_shape(getattr(self, n))}" for n in self._CONV))
        else:
            r = self.U_out.shape[1]
            ok = (self.U_in.shape[1] == r and self.A_out.shape[0] == self.U_out.shape[0]
                  and self.A_in.shape[0] == self.U_in.shape[0] and self.A_out.shape[1] == self.A_in.shape[1])
            _require(ok, "LeFT linear: expected U_out [d_out, r], U_in [d_in, r], A_out [d_out, r'], A_in [d_in, r']; got "
                         + ", ".join(f"{n} {_shape(getattr(self, n))}" for n in self._LINEAR))
            for n in ("b_mul", "b_add"):
                t = getattr(self, n)
                _require(t is None or t.shape == (self.U_out.shape[0],),
                         f"LeFT linear: {n} must be [{self.U_out.shape[0]}], got {_shape(t) if t is not None else None}")

    @property
    def is_conv(self) -> bool:
        return self.U is not None

    @property
    def rank(self) -> int:
        return (self.U if self.is_conv else self.U_out).shape[1]

    def check(self, weight: Tensor) -> None:
        self._check_common(weight)
        if self.is_conv:
            _require(weight.dim() == 4, f"LeFT conv applies to conv weights [C_out, C_in, k, k], got {_shape(weight)}")
            c_out, c_in, kh, kw = weight.shape
            _require(self.U.shape[0] == c_out and self.V.shape[0] == c_in and self.Q.shape[0] == kh * kw,
                     f"LeFT conv does not fit weight {_shape(weight)}: got U {_shape(self.U)}, V {_shape(self.V)}, "
                     f"Q {_shape(self.Q)}")
        else:
            _require(weight.dim() == 2 and weight.shape == (self.U_out.shape[0], self.U_in.shape[0]),
                     f"LeFT linear does not fit weight {_shape(weight)}: expected [{self.U_out.shape[0]}, "
                     f"{self.U_in.shape[0]}]")

    def adapted(self, weight: Tensor) -> Tensor:
        if self.is_conv:
            return left_conv_weight(weight, self.U, self.T, self.P, self.Q, self.V, self.R, self.S, self.act)
        return left_linear_weight(weight, self.U_out, self.U_in, self.A_out, self.A_in)

    def adapted_bias(self, bias: Optional[Tensor]) -> Optional[Tensor]:
        if bias is None or self.is_conv:
            return bias
        if self.b_mul is not None:
            bias = bias * self.b_mul
        if self.b_add is not None:
            bias = bias + self.b_add
        return bias


Adapter = Union[LoRA, LLoRA, LeFT]
