"""StyleGAN2 generator (rosinality architecture and parameter names) with per-task adapters.

Adaptable layers (fastlora task banks), as CoLoR-GAN places them: the `n_mlp` mapping
linears (role "mapping"), the style affine of every modulated conv (role "style") and
the kernel of every modulated conv (role "conv"): at 256 px 8 + 20 + 20 layers.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor, nn

import fastlora

from colorgan.layers import (CHANNEL_BASE, CHANNEL_MAX, AdaptedLinear, ConstantInput, PixelNorm, StyledConv, ToRGB,
                             channel_table, check_channels, check_config, check_size)

NOISE_MODES = ("const", "random", "none")
W_AVG_SAMPLES = 4096
W_AVG_SEED = 0


def must_be_finite(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The tensors of a state that must be finite: all but `w_avg` buffers (NaN until computed)."""
    return {k: v for k, v in tensors.items() if k.rsplit(".", 1)[-1] != "w_avg"}


class Generator(nn.Module):
    """StyleGAN2 generator: mapping z → w (`mapping`), synthesis w/w+ → image (`synthesis`).

    size: output resolution (power of two, 8..1024); style_dim, n_mlp, lr_mlp: mapping network;
    channel_multiplier (rosinality's), or channel_base/channel_max, or an explicit `channels`
    table {res: channels} for small models. `w_avg` (buffer) is the truncation centre:
    NaN until set by `update_w_avg` or loaded from a checkpoint.
    """

    def __init__(self, size: int, style_dim: int = 512, n_mlp: int = 8, channel_multiplier: int = 2,
                 lr_mlp: float = 0.01, *, channel_base: int = CHANNEL_BASE, channel_max: int = CHANNEL_MAX,
                 channels: Optional[Mapping[int, int]] = None) -> None:
        super().__init__()
        check_size(size)
        if style_dim < 1 or n_mlp < 1:
            raise ValueError(f"style_dim and n_mlp must be positive, got {style_dim}, {n_mlp}")
        self.size, self.style_dim, self.n_mlp, self.lr_mlp = size, style_dim, n_mlp, float(lr_mlp)
        self.channel_multiplier = channel_multiplier
        self.channels = (check_channels(channels, size) if channels is not None
                         else channel_table(size, channel_multiplier, channel_base, channel_max))
        self.log_size = int(math.log2(size))
        self.num_layers = (self.log_size - 2) * 2 + 1
        self.n_latent = self.log_size * 2 - 2

        self.style = nn.Sequential(PixelNorm(), *[
            AdaptedLinear(style_dim, style_dim, lr_mul=lr_mlp, activation="lrelu", role="mapping")
            for _ in range(n_mlp)])

        c4 = self.channels[4]
        self.input = ConstantInput(c4)
        self.conv1 = StyledConv(c4, c4, 3, style_dim)
        self.to_rgb1 = ToRGB(c4, style_dim, upsample=False)
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        for i in range(self.num_layers):
            res = 2 ** ((i + 5) // 2)
            self.noises.register_buffer(f"noise_{i}", torch.randn(1, 1, res, res))
        in_ch = c4
        for i in range(3, self.log_size + 1):
            out_ch = self.channels[2 ** i]
            self.convs.append(StyledConv(in_ch, out_ch, 3, style_dim, upsample=True))
            self.convs.append(StyledConv(out_ch, out_ch, 3, style_dim))
            self.to_rgbs.append(ToRGB(out_ch, style_dim))
            in_ch = out_ch
        self.register_buffer("w_avg", torch.full((style_dim,), float("nan")))

    def synthesis_resolutions(self) -> list[tuple[nn.Module, int]]:
        """(synthesis layer, the resolution it outputs) for conv1, to_rgb1, every StyledConv and every ToRGB."""
        out: list[tuple[nn.Module, int]] = [(self.conv1, 4), (self.to_rgb1, 4)]
        out += [(conv, 2 ** (3 + i // 2)) for i, conv in enumerate(self.convs)]
        out += [(rgb, 2 ** (3 + i)) for i, rgb in enumerate(self.to_rgbs)]
        return out

    # ----------------------------------------------------------------- description
    def config(self) -> dict[str, Any]:
        """Everything needed to rebuild this architecture (`Generator.from_config`)."""
        return {"size": self.size, "style_dim": self.style_dim, "n_mlp": self.n_mlp, "lr_mlp": self.lr_mlp,
                "channel_multiplier": self.channel_multiplier,
                "channels": {str(k): v for k, v in sorted(self.channels.items())}}

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "Generator":
        known = {"size", "style_dim", "n_mlp", "lr_mlp", "channel_multiplier", "channels"}
        return cls(**check_config(cfg, known, "generator"))

    @property
    def device(self) -> torch.device:
        return self.input.input.device

    # ----------------------------------------------------------------- mapping
    def mapping(self, z: Tensor, task_ids: Optional[Tensor] = None, backend: str = "auto") -> Tensor:
        """z [N, style_dim] → w [N, style_dim] (PixelNorm, then the n_mlp linears)."""
        if z.dim() != 2 or z.shape[1] != self.style_dim:
            raise ValueError(f"z must be [N, {self.style_dim}], got {list(z.shape)}")
        x = self.style[0](z)
        for layer in self.style[1:]:
            x = layer(x, task_ids=task_ids, backend=backend)
        return x

    @torch.no_grad()
    def mean_latent(self, n: int = W_AVG_SAMPLES, seed: int = W_AVG_SEED, batch: int = 1024) -> Tensor:
        """Mean w over n z drawn from a CPU generator seeded `seed`, under the active task [style_dim]."""
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.style_dim, generator=g)
        total = torch.zeros(self.style_dim, dtype=torch.float64, device=self.device)
        dtype = self.input.input.dtype
        for i in range(0, n, batch):
            total += self.mapping(z[i:i + batch].to(self.device, dtype)).double().sum(0)
        return (total / n).to(dtype)

    @torch.no_grad()
    def update_w_avg(self, n: int = W_AVG_SAMPLES, seed: int = W_AVG_SEED) -> Tensor:
        """Compute the base mapping's mean w (no task active) and store it in `w_avg`."""
        saved = fastlora.active_task(self)
        fastlora.set_task(self, None)
        try:
            self.w_avg.copy_(self.mean_latent(n, seed))
        finally:
            fastlora.set_task(self, saved)
        return self.w_avg

    @torch.no_grad()
    def task_w_avg(self, n: int = W_AVG_SAMPLES, seed: int = W_AVG_SEED) -> Tensor:
        """Truncation centre for the active task: stored w_avg + (task mean − base mean) over the
        same fixed z, so a task whose mapping adapters are still the identity uses w_avg exactly."""
        self._require_w_avg()
        task = fastlora.active_task(self)
        if task is None:
            return self.w_avg.clone()
        if isinstance(task, tuple):
            raise ValueError("task_w_avg needs one active task, not a list")
        task_mean = self.mean_latent(n, seed)
        fastlora.set_task(self, None)
        try:
            base_mean = self.mean_latent(n, seed)
        finally:
            fastlora.set_task(self, task)
        return self.w_avg + (task_mean - base_mean)

    def _require_w_avg(self) -> None:
        if torch.isnan(self.w_avg).any():
            raise ValueError("this generator has no stored w_avg (truncation centre); call G.update_w_avg() "
                             "or load a checkpoint that has one")

    # ----------------------------------------------------------------- noise
    def make_noise(self, batch: int = 1, generator: Optional[torch.Generator] = None) -> list[Tensor]:
        """Fresh noise maps [batch, 1, res, res] per layer (drawn on the CPU when `generator` is given)."""
        dev = "cpu" if generator is not None else self.device
        out = []
        for i in range(self.num_layers):
            res = 2 ** ((i + 5) // 2)
            out.append(torch.randn(batch, 1, res, res, generator=generator, device=dev))
        return [t.to(self.device, self.input.input.dtype) for t in out]

    def stored_noise(self) -> list[Tensor]:
        """The fixed per-layer noise maps of noise_mode "const" ([1, 1, res, res] each, layer order)."""
        return [getattr(self.noises, f"noise_{i}") for i in range(self.num_layers)]

    def _noise_list(self, batch: int, noise_mode: str, noise: Optional[Sequence[Optional[Tensor]]]) -> list:
        if noise is not None:
            if len(noise) != self.num_layers:
                raise ValueError(f"noise must be a list of {self.num_layers} tensors (or None entries), got {len(noise)}")
            return list(noise)
        if noise_mode == "const":
            return self.stored_noise()
        if noise_mode == "random":
            return self.make_noise(batch)
        if noise_mode == "none":
            return [None] * self.num_layers
        raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")

    # ----------------------------------------------------------------- synthesis
    def truncate(self, w: Tensor, psi: float, center: Optional[Tensor] = None) -> Tensor:
        """center + psi·(w − center); w [N, D] or [N, L, D]; center defaults to w_avg."""
        if psi == 1:
            return w
        if center is None:
            self._require_w_avg()
            center = self.w_avg
        return center.to(w) + psi * (w - center.to(w))

    def broadcast_latents(self, w: Tensor) -> Tensor:
        """w [N, D] → w+ [N, n_latent, D]; w+ is checked and passed through."""
        if w.dim() == 2 and w.shape[1] == self.style_dim:
            return w.unsqueeze(1).expand(-1, self.n_latent, -1)
        if w.dim() == 3 and w.shape[1:] == (self.n_latent, self.style_dim):
            return w
        raise ValueError(f"w must be [N, {self.style_dim}] or w+ [N, {self.n_latent}, {self.style_dim}], "
                         f"got {list(w.shape)}")

    def synthesis(self, w: Tensor, *, noise_mode: str = "const", noise: Optional[Sequence[Optional[Tensor]]] = None,
                  task_ids: Optional[Tensor] = None, backend: str = "auto",
                  return_features: bool = False) -> Union[Tensor, tuple[Tensor, list[Tensor]]]:
        """w [N, D] or w+ [N, n_latent, D] → image [N, 3, size, size] (roughly in [-1, 1]); with
        return_features, also the output of every styled conv ([N, C, h, w] each, coarse to fine)."""
        ws = self.broadcast_latents(w)
        n = ws.shape[0]
        noises = self._noise_list(n, noise_mode, noise)
        out = self.input(n)
        out = self.conv1(out, ws[:, 0], noise=noises[0], task_ids=task_ids, backend=backend)
        features = [out]
        skip = self.to_rgb1(out, ws[:, 1], task_ids=task_ids, backend=backend)
        i = 1
        for conv_up, conv, n1, n2, to_rgb in zip(self.convs[::2], self.convs[1::2], noises[1::2], noises[2::2],
                                                 self.to_rgbs):
            out = conv_up(out, ws[:, i], noise=n1, task_ids=task_ids, backend=backend)
            features.append(out)
            out = conv(out, ws[:, i + 1], noise=n2, task_ids=task_ids, backend=backend)
            features.append(out)
            skip = to_rgb(out, ws[:, i + 2], skip, task_ids=task_ids, backend=backend)
            i += 2
        return (skip, features) if return_features else skip

    def forward(self, styles: Union[Tensor, Sequence[Tensor]], *, input_is_latent: bool = False,
                truncation: float = 1.0, truncation_latent: Optional[Tensor] = None, noise_mode: str = "const",
                noise: Optional[Sequence[Optional[Tensor]]] = None, inject_index: Optional[int] = None,
                task_ids: Optional[Tensor] = None, return_latents: bool = False,
                backend: str = "auto") -> Union[Tensor, tuple[Tensor, Tensor]]:
        """z (or w/w+ with input_is_latent) → image; a list of two inputs mixes styles at `inject_index`.

        truncation: psi toward `truncation_latent` (default: the stored w_avg); noise_mode
        "const" (stored noises.noise_i), "random" or "none", or explicit `noise` maps;
        task_ids [N] index the tasks activated with fastlora.set_task(G, [names])."""
        latent = self.latents(styles, input_is_latent=input_is_latent, truncation=truncation,
                              truncation_latent=truncation_latent, inject_index=inject_index, task_ids=task_ids,
                              backend=backend)
        image = self.synthesis(latent, noise_mode=noise_mode, noise=noise, task_ids=task_ids, backend=backend)
        return (image, latent) if return_latents else image

    def latents(self, styles: Union[Tensor, Sequence[Tensor]], *, input_is_latent: bool = False,
                truncation: float = 1.0, truncation_latent: Optional[Tensor] = None,
                inject_index: Optional[int] = None, task_ids: Optional[Tensor] = None,
                backend: str = "auto") -> Tensor:
        """The w+ [N, n_latent, D] that `forward` feeds the synthesis network (mapping, truncation, mixing)."""
        inputs = [styles] if isinstance(styles, Tensor) else list(styles)
        if not 1 <= len(inputs) <= 2:
            raise ValueError(f"styles must be one tensor or a list of one or two, got {len(inputs)}")
        ws = inputs if input_is_latent else [self.mapping(z, task_ids=task_ids, backend=backend) for z in inputs]
        ws = [self.truncate(w, truncation, truncation_latent) for w in ws]
        if len(ws) == 1:
            return self.broadcast_latents(ws[0])
        if inject_index is None:
            inject_index = int(torch.randint(1, self.n_latent, ()).item())
        if not 0 <= inject_index <= self.n_latent:
            raise ValueError(f"inject_index must lie in [0, {self.n_latent}], got {inject_index}")
        a, b = (self.broadcast_latents(w) for w in ws)
        return torch.cat([a[:, :inject_index], b[:, inject_index:]], 1)
