"""An export-only StyleGAN2 generator: one task merged into constant weights, plain torch ops.

`ExportGenerator(G, task, ...)` walks the layers of a `colorgan.Generator`, takes each one's
weights with `task` merged (`fastlora.merged_weights`: fp32 merge, cast afterwards) and
implements the forward pass with ops that trace into a small, static ONNX graph:

* the shared-weight modulated convolution: x·s, one constant kernel (pre-scaled by the
  equalised-LR factor), then the demodulation d = rsqrt(s² @ Σ_taps Ŵ² + 1e-8) with
  Σ_taps Ŵ² a constant [C_in, C_out] — never per-sample weights or `groups=batch`;
* up-sampling as a stride-2 transposed conv followed by a constant depthwise 4×4 blur;
  the ToRGB skip up-sampling as one constant depthwise stride-2 transposed conv;
* noise either baked in (strength·noise_i as a constant) or a graph input, never random;
* the truncation centre (the task's w_avg) baked in; psi an optional input [1];
* every shape depends on the batch only through broadcasting, so the batch axis is dynamic.

Inputs are float32 whatever the weights' dtype (the graph casts), the output is float32.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import fastlora
from colorgan.layers import StyledConv
from fastlora import functional as FL
from fastlora.functional import DEMOD_EPS, SQRT2

INPUTS = ("z", "w", "wplus")
NOISE = ("const", "input")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


def resolve_dtype(dtype: Any) -> tuple[str, torch.dtype]:
    """'fp32' | 'fp16' | torch.float32 | torch.float16 → (name, torch dtype)."""
    for name, dt in DTYPES.items():
        if dtype in (name, dt):
            return name, dt
    raise ValueError(f"dtype must be one of {list(DTYPES)} (or the matching torch dtype), got {dtype!r}")


class _Affine(nn.Module):
    """y = x @ Wᵀ·scale + b·lr_mul with the equalised-LR factors folded into constants."""

    def __init__(self, weight: Tensor, bias: Optional[Tensor], scale: float, lr_mul: float, dtype: torch.dtype,
                 activation: Optional[str] = None) -> None:
        super().__init__()
        self.register_buffer("weight", (weight.float() * scale).t().contiguous().to(dtype))
        self.register_buffer("bias", None if bias is None else (bias.float() * lr_mul).to(dtype))
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        y = x @ self.weight
        if self.bias is not None:
            y = y + self.bias
        if self.activation == "lrelu":
            y = F.leaky_relu(y, 0.2) * SQRT2
        return y


class _ModConv(nn.Module):
    """One modulated conv with its epilogue (StyledConv: noise, bias, leaky-ReLU·√2; ToRGB: bias, skip),
    built from the generator's own layer with `task` merged into its weights."""

    def __init__(self, layer: nn.Module, task: Optional[str], dtype: torch.dtype, *, noise_mode: str,
                 noise_index: Optional[int] = None, const_noise: Optional[Tensor] = None) -> None:
        super().__init__()
        conv = layer.conv  # the fastlora.ModulatedConv2d of a StyledConv or ToRGB
        mod = conv.modulation
        self.affine = _Affine(*fastlora.merged_weights(mod, task), mod.scale, mod.lr_mul, dtype)
        w = fastlora.merged_weights(conv, task)[0].float() * conv.scale  # [C_out, C_in, k, k], merged in fp32
        self.k = w.shape[-1]
        self.kind = "styled" if isinstance(layer, StyledConv) else "rgb"
        self.up, self.demodulate = conv.up, conv.demodulate
        self.noise_mode, self.noise_index = noise_mode, noise_index
        self.register_buffer("weight", (w.transpose(0, 1) if self.up else w).contiguous().to(dtype))
        self.register_buffer("wsq", w.square().sum((2, 3)).t().contiguous().to(dtype) if self.demodulate else None)
        if self.up:
            blur = FL.make_blur_kernel() * 4
            self.blur_pad = FL.up_blur_pad(self.k)
            c_out = w.shape[0]
            self.register_buffer("blur", torch.flip(blur, (0, 1))[None, None].repeat(c_out, 1, 1, 1).to(dtype))
        if self.kind == "styled":
            self.register_buffer("bias", layer.activate.bias.detach().float().reshape(1, -1, 1, 1).to(dtype))
            strength = layer.noise.weight.detach().float()
            if noise_mode == "const":
                self.register_buffer("noise", (strength * const_noise.float()).to(dtype))
            else:
                self.register_buffer("strength", strength.reshape(1, 1, 1, 1).to(dtype))
        else:
            self.register_buffer("bias", layer.bias.detach().float().reshape(1, 3, 1, 1).to(dtype))
            # ToRGB skip: zero insertion ×2, pad (2, 1) and the 4×4 FIR (gain 4) as one depthwise
            # stride-2 transposed conv (padding 1 crops the full output to 2H).
            self.register_buffer("skip_kernel", (FL.make_blur_kernel() * 4)[None, None].repeat(3, 1, 1, 1).to(dtype))

    def forward(self, x: Tensor, w: Tensor, noise: Optional[Tensor] = None, skip: Optional[Tensor] = None) -> Tensor:
        s = self.affine(w)  # [N, C_in]
        xs = x * s[:, :, None, None]
        if self.up:
            y = F.conv_transpose2d(xs, self.weight, stride=2, padding=0)
            p0, p1 = self.blur_pad
            if p0 == p1:  # k = 3: symmetric, so the conv pads (a plain ONNX Conv attribute)
                y = F.conv2d(y, self.blur, padding=p0, groups=self.blur.shape[0])
            else:
                y = F.conv2d(F.pad(y, (p0, p1, p0, p1)), self.blur, groups=self.blur.shape[0])
        else:
            y = F.conv2d(xs, self.weight, padding=self.k // 2)
        if self.demodulate:
            d = torch.rsqrt(s.square() @ self.wsq + DEMOD_EPS)
            y = y * d[:, :, None, None]
        if self.kind == "styled":
            if self.noise_mode == "const":
                y = y + self.noise
            else:
                y = y + self.strength * noise
            return F.leaky_relu(y + self.bias, 0.2) * SQRT2
        y = y + self.bias
        if skip is not None:
            y = y + F.conv_transpose2d(skip, self.skip_kernel, stride=2, padding=1, groups=3)
        return y


class ExportGenerator(nn.Module):
    """A plain StyleGAN2 generator with `task` merged into constant weights, for ONNX export.

    G: a `colorgan.Generator`; task: a task name or None (the base). input: "z" [N, style_dim]
    (mapping included), "w" [N, style_dim] or "wplus" [N, n_latent, style_dim]. psi_input: an
    input "psi" [1] truncates toward the task's w_avg (`G.task_w_avg`, baked in; pass
    `w_avg` to override). noise: "const" (G's stored noise maps, baked in) or "input" (inputs
    noise_0..noise_{L-1}, each [N or 1, 1, res, res]). dtype: "fp32" or "fp16" (weights cast
    after the fp32 merge; inputs and output stay float32).
    """

    def __init__(self, G: nn.Module, task: Optional[str] = None, *, input: str = "z", psi_input: bool = False,
                 noise: str = "const", dtype: Any = "fp32", w_avg: Optional[Tensor] = None) -> None:
        super().__init__()
        if input not in INPUTS:
            raise ValueError(f"input must be one of {INPUTS}, got {input!r}")
        if noise not in NOISE:
            raise ValueError(f"noise must be one of {NOISE}, got {noise!r}")
        self.dtype_name, self.dtype = resolve_dtype(dtype)
        self.input_kind, self.psi_input, self.noise_mode, self.task = input, bool(psi_input), noise, task
        self.size, self.style_dim = G.size, G.style_dim
        self.n_latent, self.num_layers = G.n_latent, G.num_layers
        dt = self.dtype
        if task is not None and task not in fastlora.task_names(G):
            raise KeyError(f"unknown task {task!r}; the generator has tasks {fastlora.task_names(G)}")
        # the fraction of the task merged in (`fastlora.set_strength`)
        self.strength = None if task is None else float(fastlora.task_config(G, task).strength)

        self.mapping = nn.ModuleList()
        if input == "z":
            for layer in G.style[1:]:  # after PixelNorm: the mapping's EqualLinear layers
                self.mapping.append(_Affine(*fastlora.merged_weights(layer, task), layer.scale, layer.lr_mul, dt,
                                            activation="lrelu"))
        if self.psi_input:
            center = task_center(G, task) if w_avg is None else w_avg.detach().float().cpu()
            if center.shape != (G.style_dim,) or not torch.isfinite(center).all():
                raise ValueError(f"the truncation centre must be a finite [{G.style_dim}] vector, got "
                                 f"{list(center.shape)} with {int((~torch.isfinite(center)).sum())} non-finite values")
            self.register_buffer("w_avg", center.to(dt))
        self.register_buffer("const", G.input.input.detach().float().to(dt))
        noises = [t.detach().cpu() for t in G.stored_noise()]
        self.noise_shapes = [tuple(t.shape[1:]) for t in noises]
        styled = [G.conv1, *G.convs]
        self.conv1, *convs = [_ModConv(layer, task, dt, noise_mode=noise, noise_index=i, const_noise=noises[i])
                              for i, layer in enumerate(styled)]
        self.convs = nn.ModuleList(convs)
        self.to_rgb1 = _ModConv(G.to_rgb1, task, dt, noise_mode=noise)
        self.to_rgbs = nn.ModuleList(_ModConv(layer, task, dt, noise_mode=noise) for layer in G.to_rgbs)

    # ----------------------------------------------------------------- I/O description
    def input_names(self) -> list[str]:
        names = [self.input_kind]
        if self.psi_input:
            names.append("psi")
        if self.noise_mode == "input":
            names += [f"noise_{i}" for i in range(self.num_layers)]
        return names

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        axes: dict[str, dict[int, str]] = {self.input_kind: {0: "batch"}, "image": {0: "batch"}}
        if self.noise_mode == "input":
            for i in range(self.num_layers):
                axes[f"noise_{i}"] = {0: "noise_batch"}  # N, or 1 to share one map across the batch
        return axes

    def example_inputs(self, batch: int = 2, generator: Optional[torch.Generator] = None,
                       psi: float = 0.7) -> tuple[Tensor, ...]:
        """Random inputs in `input_names()` order (float32, CPU)."""
        shape = (batch, self.n_latent, self.style_dim) if self.input_kind == "wplus" else (batch, self.style_dim)
        out = [torch.randn(*shape, generator=generator)]
        if self.psi_input:
            out.append(torch.tensor([psi], dtype=torch.float32))
        if self.noise_mode == "input":
            out += [torch.randn(batch, *s, generator=generator) for s in self.noise_shapes]
        return tuple(out)

    def metadata(self) -> dict[str, str]:
        """What the ONNX file records about itself (strings, for metadata_props)."""
        task = {"colorgan.task": "base"} if self.task is None else {"colorgan.task": self.task,
                                                                    "colorgan.strength": f"{self.strength:g}"}
        return {**task, "colorgan.input": self.input_kind,
                "colorgan.psi_input": str(int(self.psi_input)), "colorgan.noise": self.noise_mode,
                "colorgan.dtype": self.dtype_name, "colorgan.size": str(self.size),
                "colorgan.style_dim": str(self.style_dim), "colorgan.n_latent": str(self.n_latent),
                "colorgan.num_layers": str(self.num_layers)}

    # ----------------------------------------------------------------- forward
    def forward(self, latent: Tensor, *rest: Tensor) -> Tensor:
        """latent (z, w or w+), then psi [1] if psi_input, then the noise maps if noise="input"."""
        rest = list(rest)
        psi = rest.pop(0).to(self.dtype) if self.psi_input else None
        noises: Sequence[Optional[Tensor]] = [t.to(self.dtype) for t in rest] if self.noise_mode == "input" \
            else [None] * self.num_layers
        x = latent.to(self.dtype)
        if self.input_kind == "z":
            x = x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + 1e-8)
            for layer in self.mapping:
                x = layer(x)
        if psi is not None:
            c = self.w_avg
            x = c + psi * (x - c)

        def w_at(i: int) -> Tensor:
            return x[:, i] if self.input_kind == "wplus" else x

        out = self.conv1(self.const, w_at(0), noises[0])
        skip = self.to_rgb1(out, w_at(1))
        i = 1
        for j, to_rgb in enumerate(self.to_rgbs):
            out = self.convs[2 * j](out, w_at(i), noises[2 * j + 1])
            out = self.convs[2 * j + 1](out, w_at(i + 1), noises[2 * j + 2])
            skip = to_rgb(out, w_at(i + 2), skip=skip)
            i += 2
        return skip.float()


@torch.no_grad()
def task_center(G: nn.Module, task: Optional[str]) -> Tensor:
    """The truncation centre of `task` (None: the stored w_avg), float32 on the CPU; G's active
    task is restored afterwards."""
    saved = fastlora.active_task(G)
    try:
        fastlora.set_task(G, task)
        return G.task_w_avg().detach().float().cpu()
    finally:
        fastlora.set_task(G, saved)


@torch.no_grad()
def reference_forward(G: nn.Module, task: Optional[str], inputs: Sequence[Tensor], *, input: str, psi_input: bool,
                      noise: str, center: Optional[Tensor] = None) -> Tensor:
    """What G itself (adapters unmerged, the PyTorch reference backend, float32) gives for the
    inputs of an `ExportGenerator` with these settings. G's active task is restored afterwards."""
    inputs = list(inputs)
    latent = inputs.pop(0)
    psi = float(inputs.pop(0).reshape(-1)[0]) if psi_input else 1.0
    noise_list = [t.to(G.device) for t in inputs] if noise == "input" else None
    saved = fastlora.active_task(G)
    try:
        fastlora.set_task(G, task)
        if psi != 1.0 and center is None:
            center = G.task_w_avg()
        return G(latent.to(G.device), input_is_latent=input != "z", truncation=psi,
                 truncation_latent=None if center is None else center.to(G.device), noise_mode="const",
                 noise=noise_list, backend="torch").float().cpu()
    finally:
        fastlora.set_task(G, saved)
