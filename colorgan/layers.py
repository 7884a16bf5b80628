"""StyleGAN2 building blocks (rosinality layout and parameter names) on fastlora layers.

Parameter names follow rosinality/stylegan2-pytorch so that its checkpoints convert
key for key: the only differences are modulated-conv weights stored as
[C_out, C_in, k, k] (rosinality keeps a leading 1) and the FIR blur kernels, which
are constants here (fastlora builds them) instead of stored buffers.
"""
from __future__ import annotations

import math
from typing import Mapping, Optional

import torch
from torch import Tensor, nn

from fastlora import AdaptedConv2d, AdaptedLinear, ModulatedConv2d
from fastlora import functional as FL

SIZES = tuple(2 ** i for i in range(3, 11))  # 8 .. 1024
CHANNEL_BASE = 16384
CHANNEL_MAX = 512


def channel_table(size: int, channel_multiplier: int = 2, channel_base: int = CHANNEL_BASE,
                  channel_max: int = CHANNEL_MAX) -> dict[int, int]:
    """Channels per resolution 4..size: min(channel_max, channel_base·cm / res).

    With the defaults this is rosinality's table ({4..32: 512, 64: 256·cm, 128: 128·cm, ...})."""
    check_size(size)
    if channel_multiplier < 1 or channel_base < 1 or channel_max < 1:
        raise ValueError(f"channel_multiplier, channel_base and channel_max must be positive, got "
                         f"{channel_multiplier}, {channel_base}, {channel_max}")
    table = {}
    for i in range(2, int(math.log2(size)) + 1):
        res = 2 ** i
        table[res] = max(1, min(channel_max, channel_base * channel_multiplier // res))
    return table


def check_size(size: int) -> None:
    if size not in SIZES:
        raise ValueError(f"image size must be a power of two in {SIZES[0]}..{SIZES[-1]}, got {size!r}")


def check_channels(channels: Mapping, size: int) -> dict[int, int]:
    """Validate an explicit channel table (keys 4..size, positive ints); JSON string keys are accepted."""
    try:
        table = {int(k): int(v) for k, v in channels.items()}
    except (TypeError, ValueError):
        raise ValueError(f"channels must map resolutions to channel counts, got {channels!r}") from None
    expected = [2 ** i for i in range(2, int(math.log2(size)) + 1)]
    if sorted(table) != expected or any(v < 1 for v in table.values()):
        raise ValueError(f"channels for size {size} must give a positive count for each resolution {expected}, "
                         f"got {dict(sorted(table.items()))}")
    return table


def check_config(cfg: Mapping, known: set, what: str) -> dict:
    """A model config dict with only `known` keys and a 'size' (for `from_config`), else a clear ValueError."""
    unknown = set(cfg) - known
    if unknown:
        raise ValueError(f"unknown {what} config keys {sorted(unknown)}; expected a subset of {sorted(known)}")
    if "size" not in cfg:
        raise ValueError(f"{what} config lacks 'size' (got keys {sorted(cfg)})")
    return dict(cfg)


def upsample_skip(x: Tensor) -> Tensor:
    """ToRGB skip path: FIR ×2 upsampling with the [1,3,3,1] kernel (gain 4, pad (2, 1))."""
    k = FL.make_blur_kernel(device=x.device, dtype=x.dtype) * 4
    return FL.upfirdn2d(x, k, up=2, pad=(2, 1))


class PixelNorm(nn.Module):
    """x / sqrt(mean(x², dim 1) + 1e-8)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + 1e-8)


class FusedLeakyReLU(nn.Module):
    """Holds the bias of a bias + leaky-ReLU(0.2)·√2 (rosinality's `activate` / ConvLayer tail)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        return FL.fused_leaky_relu(x, self.bias)


class NoiseInjection(nn.Module):
    """Per-layer noise strength (init 0); the layer adds strength·noise before the bias."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))


class ConstantInput(nn.Module):
    """The learned 4×4 input of the synthesis network."""

    def __init__(self, channels: int, size: int = 4) -> None:
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, size, size))

    def forward(self, batch: int) -> Tensor:
        return self.input.expand(batch, -1, -1, -1)


class StyledConv(nn.Module):
    """Modulated 3×3 conv (optionally upsampling ×2) + noise + bias + leaky-ReLU·√2."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, style_dim: int,
                 upsample: bool = False) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, out_channels, kernel_size, style_dim, demodulate=True, up=upsample)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channels)

    def forward(self, x: Tensor, w: Tensor, noise: Optional[Tensor] = None, task_ids: Optional[Tensor] = None,
                backend: str = "auto") -> Tensor:
        scaled = None if noise is None else self.noise.weight * noise
        return self.conv(x, w, task_ids=task_ids, bias=self.activate.bias, noise=scaled, activation="lrelu",
                         backend=backend)


class ToRGB(nn.Module):
    """Modulated 1×1 conv to RGB (no demodulation) + bias + the upsampled previous RGB."""

    def __init__(self, in_channels: int, style_dim: int, upsample: bool = True) -> None:
        super().__init__()
        self.upsample = upsample
        self.conv = ModulatedConv2d(in_channels, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: Tensor, w: Tensor, skip: Optional[Tensor] = None, task_ids: Optional[Tensor] = None,
                backend: str = "auto") -> Tensor:
        if skip is not None:
            if not self.upsample:
                raise ValueError("this ToRGB layer takes no skip input (it is the first one)")
            skip = upsample_skip(skip)
        return self.conv(x, w, task_ids=task_ids, bias=self.bias.reshape(3), skip=skip, backend=backend)


class BlurMarker(nn.Module):
    """Stands where rosinality's ConvLayer has its Blur: the blur itself runs inside the
    following strided conv (fastlora.AdaptedConv2d(down=True)), so this holds nothing."""

    def forward(self, x: Tensor) -> Tensor:
        return x


class ConvLayer(nn.Sequential):
    """Discriminator conv: [blur] + equalised conv (stride 2 if downsampling) + [bias + leaky-ReLU·√2].

    Child indices match rosinality's ConvLayer, so parameter names are `0.weight`/`1.bias`
    (no downsampling) or `1.weight`/`2.bias` (downsampling)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, downsample: bool = False,
                 bias: bool = True, activate: bool = True) -> None:
        layers: list[nn.Module] = []
        if downsample:
            layers.append(BlurMarker())
        layers.append(AdaptedConv2d(in_channels, out_channels, kernel_size, bias=bias and not activate,
                                    down=downsample, padding=0 if downsample else kernel_size // 2))
        if activate:
            if not bias:
                raise ValueError("ConvLayer with activate=True needs bias=True (rosinality's ScaledLeakyReLU "
                                 "variant is not used by StyleGAN2)")
            layers.append(FusedLeakyReLU(out_channels))
        super().__init__(*layers)

    @property
    def conv(self) -> AdaptedConv2d:
        return self[1] if isinstance(self[0], BlurMarker) else self[0]


class ResBlock(nn.Module):
    """Discriminator residual block: two 3×3 convs (the second downsamples) and a 1×1 skip, / √2."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = ConvLayer(in_channels, in_channels, 3)
        self.conv2 = ConvLayer(in_channels, out_channels, 3, downsample=True)
        self.skip = ConvLayer(in_channels, out_channels, 1, downsample=True, activate=False, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return (self.conv2(self.conv1(x)) + self.skip(x)) / math.sqrt(2)


__all__ = [
    "AdaptedLinear", "BlurMarker", "ConstantInput", "ConvLayer", "FusedLeakyReLU", "NoiseInjection", "PixelNorm",
    "ResBlock", "SIZES", "StyledConv", "ToRGB", "channel_table", "check_channels", "check_size", "upsample_skip",
]
