"""nn.Modules: adapter parameter holders and the adaptable StyleGAN2 layers.

Every adaptable layer holds a bank of named tasks (`adapters`, a ModuleDict of
parameter holders) on top of its frozen base weight. Which task applies is the
layer's `active` setting: a task name, None (the base), or a tuple of names for
per-sample `task_ids`. Model-wide operations live in `fastlora.bank`.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn

from fastlora import functional as FL
from fastlora.adapters import Adapter, LeFT, LLoRA, LoRA
from fastlora.config import AdapterConfig

Active = Union[None, str, tuple]


# ----------------------------------------------------------------------------- parameter holders

class AdapterParams(nn.Module):
    """Trainable tensors of one task's adapter on one layer; `adapter()` wraps them."""

    config: AdapterConfig

    def adapter(self) -> Adapter:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def strength(self) -> float:
        """The task's strength (`AdapterConfig.strength`; 1 for a holder not yet in a bank)."""
        config = getattr(self, "config", None)
        return 1.0 if config is None else float(config.strength)


class LoRAParams(AdapterParams):
    def __init__(self, d_in: int, d_out: int, rank: int, alpha: float, bias_offset: bool, compat: str) -> None:
        super().__init__()
        self.alpha = alpha
        self.A = nn.Parameter(torch.randn(d_in, rank) / math.sqrt(rank))
        self.B = nn.Parameter(torch.zeros(d_out, rank))
        # The published code initialises its bias offset to 1 (not the identity): docs/design.md §3.2, defect 2.
        fill = 1.0 if compat == "upstream" else 0.0
        self.bias = nn.Parameter(torch.full((d_out,), fill)) if bias_offset else None

    def adapter(self) -> LoRA:
        s = self.strength  # ΔW and the bias offset are linear in B and the offset
        if s == 1.0:
            return LoRA(self.A, self.B, self.alpha, self.bias)
        return LoRA(self.A, s * self.B, self.alpha, None if self.bias is None else s * self.bias)


class LLoRAParams(AdapterParams):
    def __init__(self, c_in: int, c_out: int, k: int, rank: int, alpha: float, act: str, compat: str) -> None:
        super().__init__()
        self.alpha, self.act = alpha, act
        if compat == "upstream":
            # Published: A and B ~ N(0,1)/r^(2/3), B_inst zero (with act="both" nothing ever trains: docs/design.md §3.2, defect 1).
            self.A = nn.Parameter(torch.randn(c_in, rank) / rank ** (2.0 / 3.0))
            self.B = nn.Parameter(torch.randn(c_out, rank) / rank ** (2.0 / 3.0))
            self.B_inst = nn.Parameter(torch.zeros(rank, rank, k * k))
        else:
            # Default: A zero (ΔW = 0 at init); B and B_inst positive, so M = B·B_inst > 0 and the inner
            # ReLU passes everything (a random sign could zero a whole small layer, e.g. a 3-channel ToRGB,
            # and leave it dead); dA ≠ 0 from step one, B and B_inst follow once A moves.
            self.A = nn.Parameter(torch.zeros(c_in, rank))
            self.B = nn.Parameter(torch.randn(c_out, rank).abs())
            self.B_inst = nn.Parameter(torch.randn(rank, rank, k * k).abs() / math.sqrt(rank))

    def adapter(self) -> LLoRA:
        s = self.strength  # ΔW is linear in A and the outer ReLU positively homogeneous: s·ΔW exactly
        return LLoRA(self.A if s == 1.0 else s * self.A, self.B, self.B_inst, self.alpha, self.act)


class LeFTParams(AdapterParams):
    def __init__(self, shape: Sequence[int], rank: int, act: str, compat: str, has_bias: bool) -> None:
        super().__init__()
        self.act = act
        zero_pairs = compat == "upstream"  # published: both additive factors zero, a saddle (docs/design.md §3)

        def rnd(*s: int) -> nn.Parameter:
            return nn.Parameter(torch.zeros(*s) if zero_pairs else torch.randn(*s) / math.sqrt(rank))

        if len(shape) == 4:
            c_out, c_in, kh, kw = shape
            kk, g = kh * kw, rank ** (-2.0 / 3.0)
            self.U = nn.Parameter(torch.full((c_out, rank), g))
            self.T = nn.Parameter(torch.full((rank, rank, kk), g))
            self.V = nn.Parameter(torch.full((c_in, rank), g))
            self.P = nn.Parameter(torch.zeros(c_out, rank))
            self.Q = rnd(kk, rank)
            self.R = nn.Parameter(torch.zeros(c_in, rank))
            self.S = rnd(kk, rank)
        else:
            d_out, d_in = shape
            g = rank ** -0.5
            self.U_out = nn.Parameter(torch.full((d_out, rank), g))
            self.U_in = nn.Parameter(torch.full((d_in, rank), g))
            self.A_out = nn.Parameter(torch.zeros(d_out, rank))
            self.A_in = rnd(d_in, rank)
            self.b_mul = nn.Parameter(torch.ones(d_out)) if has_bias else None
            self.b_add = nn.Parameter(torch.zeros(d_out)) if has_bias else None

    def adapter(self) -> LeFT:
        if hasattr(self, "U"):  # strength below 1 is refused for LeFT convs by AdapterConfig
            return LeFT.conv(self.U, self.T, self.P, self.Q, self.V, self.R, self.S, act=self.act)
        s = self.strength
        if s == 1.0:
            return LeFT.linear(self.U_out, self.U_in, self.A_out, self.A_in, self.b_mul, self.b_add)
        # W ⊙ (s·Uo·Uiᵀ + (1−s)·1·1ᵀ) + s·Ao·Aiᵀ = W + s·(Ŵ − W): one more rank in the multiplicative factors
        c = math.sqrt(1.0 - s)
        U_out = torch.cat([math.sqrt(s) * self.U_out, torch.full_like(self.U_out[:, :1], c)], dim=1)
        U_in = torch.cat([math.sqrt(s) * self.U_in, torch.full_like(self.U_in[:, :1], c)], dim=1)
        b_mul = None if self.b_mul is None else s * self.b_mul + (1.0 - s)
        b_add = None if self.b_add is None else s * self.b_add
        return LeFT.linear(U_out, U_in, s * self.A_out, self.A_in, b_mul, b_add)


def make_adapter_params(config: AdapterConfig, weight_shape: Sequence[int], role: str,
                        has_bias: bool) -> AdapterParams:
    """The parameter holder a task of `config` adds to a layer of this weight shape and role."""
    alpha = config.alpha_for(role)
    is_conv = len(weight_shape) == 4
    form = config.form(conv=is_conv)
    if form == "left":
        return LeFTParams(weight_shape, config.rank, config.act, config.compat, has_bias)
    if form == "llora":
        c_out, c_in, k, _ = weight_shape
        return LLoRAParams(c_in, c_out, k, config.rank, alpha, config.act, config.compat)
    d_out = weight_shape[0]
    d_in = math.prod(weight_shape[1:])
    return LoRAParams(d_in, d_out, config.rank, alpha, config.bias_offset and has_bias and not is_conv,
                      config.compat)


# ----------------------------------------------------------------------------- the bank

class AdaptedLayer(nn.Module):
    """Base of adaptable layers: frozen `weight` (and `bias`), a bank of task adapters."""

    role: str = "mapping"
    weight: nn.Parameter
    bias: Optional[nn.Parameter]

    def __init__(self) -> None:
        super().__init__()
        self.adapters = nn.ModuleDict()
        self.adaptable = True
        self.active: Active = None
        self.merged: Optional[str] = None
        self._unmerged: Optional[tuple[Tensor, Optional[Tensor]]] = None

    # --- tasks
    def add_adapter(self, task: str, config: AdapterConfig) -> None:
        if task in self.adapters:
            raise ValueError(f"task {task!r} already has an adapter on this layer")
        params = make_adapter_params(config, self.weight.shape, self.role, self.bias is not None)
        params.config = config
        self.adapters[task] = params.to(device=self.weight.device, dtype=self.weight.dtype)

    @torch.no_grad()
    def reset_adapter(self, task: str) -> None:
        """Put task's adapter back to fresh initial values (the identity: the adapted weight is the base's)."""
        params = self._params(task)
        fresh = make_adapter_params(params.config, self.weight.shape, self.role, self.bias is not None)
        for p, q in zip(params.parameters(), fresh.parameters()):
            p.copy_(q)

    def current_adapter(self, task_ids: Optional[Tensor] = None) -> FL.AdapterArg:
        """The adapter argument for the functional op under the current `active` setting."""
        active = self.active
        if self.merged is not None:
            if task_ids is None and active == self.merged:
                return None
            raise RuntimeError(f"layer is merged with task {self.merged!r}; unmerge before using task {active!r}")
        if task_ids is None:
            if isinstance(active, tuple):
                raise ValueError(f"several tasks are active {active}; pass task_ids [N] choosing one per sample")
            return None if active is None else self._params(active).adapter()
        if not isinstance(active, tuple):
            raise ValueError("task_ids given but a single task is active; activate a list of tasks first "
                             "(fastlora.set_task(model, [name, ...]))")
        return [None if t is None else self._params(t).adapter() for t in active]

    def _params(self, task: str) -> AdapterParams:
        if task not in self.adapters:
            raise KeyError(f"unknown task {task!r}; this layer has {list(self.adapters)}")
        return self.adapters[task]

    # --- merge
    @torch.no_grad()
    def merge(self, task: str) -> None:
        """Write task's adapted weight (and bias) into the base parameters; `unmerge` restores them exactly."""
        if self.merged is not None:
            raise RuntimeError(f"layer already merged with task {self.merged!r}; unmerge first")
        adapter = self._params(task).adapter()
        self._unmerged = (self.weight.detach().clone(), None if self.bias is None else self.bias.detach().clone())
        self.weight.copy_(FL.adapted_weight(self.weight, adapter))
        if self.bias is not None:
            self.bias.copy_(FL.adapted_bias(self.bias, adapter))
        self.merged = task

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged is None:
            return
        w, b = self._unmerged
        self.weight.copy_(w)
        if b is not None:
            self.bias.copy_(b)
        self.merged, self._unmerged = None, None


class AdaptedLinear(AdaptedLayer):
    """Equalised-LR linear layer (rosinality's EqualLinear) with a task bank.

    y = x·(Ŵ·lr_mul/√in)ᵀ + b̂·lr_mul, then leaky-ReLU·√2 if activation="lrelu".
    """

    def __init__(self, in_dim: int, out_dim: int, bias: bool = True, bias_init: float = 0.0, lr_mul: float = 1.0,
                 activation: Optional[str] = None, role: str = "mapping") -> None:
        super().__init__()
        self.role = role
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init))) if bias else None
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x: Tensor, task_ids: Optional[Tensor] = None, backend: str = "auto") -> Tensor:
        return FL.linear(x, self.weight, self.bias, adapter=self.current_adapter(task_ids), task_ids=task_ids,
                         scale=self.scale, bias_scale=self.lr_mul, activation=self.activation, backend=backend)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[1]}, {self.weight.shape[0]}, lr_mul={self.lr_mul}, activation={self.activation}"


class ModulatedConv2d(AdaptedLayer):
    """StyleGAN2 modulated conv with a task bank on its kernel and on its style affine (`modulation`)."""

    role = "conv"

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, style_dim: int,
                 demodulate: bool = True, up: bool = False, down: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = None
        self.modulation = AdaptedLinear(style_dim, in_channels, bias_init=1.0, role="style")
        self.scale = 1.0 / math.sqrt(in_channels * kernel_size ** 2)
        self.demodulate, self.up, self.down = demodulate, up, down
        self.form = "shared"  # torch backend only: "grouped" runs the published per-sample-weight computation

    def forward(self, x: Tensor, w: Tensor, *, task_ids: Optional[Tensor] = None, bias: Optional[Tensor] = None,
                noise: Optional[Tensor] = None, activation: Optional[str] = None, skip: Optional[Tensor] = None,
                backend: str = "auto", form: Optional[str] = None) -> Tensor:
        form = self.form if form is None else form
        style = self.modulation(w, task_ids=task_ids, backend=backend)
        return FL.modulated_conv2d(x, self.weight, style, adapter=self.current_adapter(task_ids), task_ids=task_ids,
                                   scale=self.scale, demodulate=self.demodulate, up=self.up, down=self.down,
                                   bias=bias, noise=noise, activation=activation, skip=skip, backend=backend,
                                   form=form)

    def extra_repr(self) -> str:
        c_out, c_in, k, _ = self.weight.shape
        return f"{c_in}, {c_out}, k={k}, demodulate={self.demodulate}, up={self.up}, down={self.down}"


class AdaptedConv2d(AdaptedLayer):
    """Equalised-LR conv (rosinality's EqualConv2d, with optional blur-downsampling and
    bias + leaky-ReLU) with a task bank; used by the discriminator."""

    role = "disc"

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 down: bool = False, activation: Optional[str] = None, padding: Optional[int] = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.scale = 1.0 / math.sqrt(in_channels * kernel_size ** 2)
        self.down, self.activation, self.padding = down, activation, padding

    def forward(self, x: Tensor) -> Tensor:
        return FL.conv2d(x, self.weight, self.bias, adapter=self.current_adapter(), scale=self.scale,
                         down=self.down, padding=self.padding, activation=self.activation)
