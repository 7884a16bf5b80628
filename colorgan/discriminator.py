"""StyleGAN2 discriminator (rosinality architecture and parameter names), with CoLoR-GAN's
optional patch heads and optional per-task adapters."""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import torch
from torch import Tensor, nn

from colorgan.layers import (CHANNEL_BASE, CHANNEL_MAX, AdaptedLinear, ConvLayer, ResBlock, channel_table,
                             check_channels, check_config, check_size)
from fastlora import AdaptedLayer

PATCH_RESOLUTIONS = (32, 16)
MAX_PATCH_HEADS = 4


class PatchHeads(nn.Module):
    """CoLoR-GAN's `Extra`: one 3×3 conv (+ bias, leaky-ReLU) to 1 channel per intermediate
    feature map; parameter names `new_conv.<i>.0.weight` / `new_conv.<i>.1.bias`."""

    def __init__(self, in_channels: list[int]) -> None:
        super().__init__()
        self.new_conv = nn.ModuleList([ConvLayer(c, 1, 3) for c in in_channels])

    def forward(self, feat: Tensor, index: int) -> Tensor:
        return self.new_conv[index](feat)


class Discriminator(nn.Module):
    """StyleGAN2 discriminator: FromRGB 1×1, residual blocks with blur-downsampling,
    minibatch stddev (group 4), final 3×3 conv, two equalised linears.

    patch_heads: add CoLoR-GAN's patch heads on the ResBlock conv outputs at 32 and 16 px
    (up to 4 maps, as the published code selects them at 256 px); `forward(x, patch=i)`
    returns head i's [N, 1, h, w] map instead of the image logit.
    adapters: let fastlora tasks adapt the convs (`convs.*` and `final_conv`, as the
    published code intends); off by default (the published D path crashes, D is fine-tuned).
    """

    def __init__(self, size: int, channel_multiplier: int = 2, *, channel_base: int = CHANNEL_BASE,
                 channel_max: int = CHANNEL_MAX, channels: Optional[Mapping[int, int]] = None,
                 patch_heads: bool = False, adapters: bool = False, stddev_group: int = 4) -> None:
        super().__init__()
        check_size(size)
        self.size, self.channel_multiplier = size, channel_multiplier
        self.channels = (check_channels(channels, size) if channels is not None
                         else channel_table(size, channel_multiplier, channel_base, channel_max))
        self.stddev_group, self.stddev_feat = stddev_group, 1
        log_size = int(math.log2(size))
        convs: list[nn.Module] = [ConvLayer(3, self.channels[size], 1)]
        in_ch = self.channels[size]
        for i in range(log_size, 2, -1):
            out_ch = self.channels[2 ** (i - 1)]
            convs.append(ResBlock(in_ch, out_ch))
            in_ch = out_ch
        self.convs = nn.Sequential(*convs)
        c4 = self.channels[4]
        self.final_conv = ConvLayer(in_ch + 1, c4, 3)
        self.final_linear = nn.Sequential(AdaptedLinear(c4 * 4 * 4, c4, activation="lrelu", role="disc"),
                                          AdaptedLinear(c4, 1, role="disc"))
        self.patch_sources = self._patch_sources()
        self.has_patch_heads = bool(patch_heads)
        if patch_heads:
            if not self.patch_sources:
                raise ValueError(f"patch heads need feature maps at {PATCH_RESOLUTIONS} px; a {size} px "
                                 f"discriminator has none")
            self.extra = PatchHeads([c for _, _, c in self.patch_sources])
        self.adapters_enabled = bool(adapters)
        for name, m in self.named_modules():
            if isinstance(m, AdaptedLayer):
                m.adaptable = self.adapters_enabled and (name.startswith("convs.") or name.startswith("final_conv."))

    @staticmethod
    def n_layers(size: int) -> int:
        """Layers before the final conv (`convs`): the from-RGB layer and one block per resolution down to 8."""
        return int(math.log2(size)) - 1

    def _patch_sources(self) -> list[tuple[int, str, int]]:
        """(block index, "conv1"|"conv2", channels) of the maps the patch heads read, in forward order."""
        out, res = [], self.size
        for b in range(1, len(self.convs)):
            c_in, c_out = self.channels[res], self.channels[res // 2]
            for which, r, c in (("conv1", res, c_in), ("conv2", res // 2, c_out)):
                if r in PATCH_RESOLUTIONS and len(out) < MAX_PATCH_HEADS:
                    out.append((b, which, c))
            res //= 2
        return out

    def config(self) -> dict[str, Any]:
        return {"size": self.size, "channel_multiplier": self.channel_multiplier,
                "channels": {str(k): v for k, v in sorted(self.channels.items())},
                "patch_heads": self.has_patch_heads, "adapters": self.adapters_enabled,
                "stddev_group": self.stddev_group}

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "Discriminator":
        known = {"size", "channel_multiplier", "channels", "patch_heads", "adapters", "stddev_group"}
        return cls(**check_config(cfg, known, "discriminator"))

    @property
    def num_patch_heads(self) -> int:
        return len(self.patch_sources) if self.has_patch_heads else 0

    def minibatch_stddev(self, x: Tensor) -> Tensor:
        """Append the group stddev feature (rosinality; the group is the largest divisor of N up to 4)."""
        n, c, h, w = x.shape
        group = min(n, self.stddev_group)
        while n % group:
            group -= 1
        s = x.reshape(group, -1, self.stddev_feat, c // self.stddev_feat, h, w)
        s = torch.sqrt(s.var(0, unbiased=False) + 1e-8)
        s = s.mean([2, 3, 4], keepdim=True).squeeze(2)
        s = s.repeat(group, 1, h, w)
        return torch.cat([x, s], 1)

    def forward(self, x: Tensor, patch: Optional[int] = None) -> Tensor:
        """Image logits [N, 1]; with `patch=i`, patch head i's map [N, 1, h, w] instead."""
        if x.dim() != 4 or x.shape[1:] != (3, self.size, self.size):
            raise ValueError(f"discriminator input must be [N, 3, {self.size}, {self.size}], got {list(x.shape)}")
        if x.is_cuda:  # channels-last through the convs (cuDNN's fast layout; the fused generator's output layout)
            x = x.contiguous(memory_format=torch.channels_last)
        if patch is not None:
            return self._patch(x, patch)
        out = self.convs(x)
        out = self.final_conv(self.minibatch_stddev(out))
        return self.final_linear(out.reshape(out.shape[0], -1))

    def _patch(self, x: Tensor, index: int) -> Tensor:
        if not self.has_patch_heads:
            raise ValueError("this discriminator has no patch heads (build it with patch_heads=True)")
        if not 0 <= index < len(self.patch_sources):
            raise ValueError(f"patch head index must lie in [0, {len(self.patch_sources)}), got {index}")
        block, which, _ = self.patch_sources[index]
        out = self.convs[0](x)
        for b in range(1, block):
            out = self.convs[b](out)
        h = self.convs[block].conv1(out)
        if which == "conv2":
            h = self.convs[block].conv2(h)
        return self.extra(h, index)
