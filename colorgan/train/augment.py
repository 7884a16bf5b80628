"""Differentiable augmentation (DiffAugment-style: color, translation, cutout) applied to real and
fake images before the discriminator. Random draws come from the augmenter's own CPU
torch.Generator, so its state can be checkpointed and a resumed run repeats them exactly."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

POLICIES = ("color", "translation", "cutout")
DEFAULT_POLICY = "color,translation,cutout"


def parse_policy(text: str) -> tuple[str, ...]:
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    bad = [p for p in parts if p not in POLICIES]
    if bad or not parts:
        raise ValueError(f"augmentation policy must be a comma list of {POLICIES}, got {text!r}")
    return parts


class DiffAugment:
    """x [N, C, H, W] in [-1, 1] → augmented x, differentiable w.r.t. x.

    color: brightness ±0.5, saturation ×[0, 2], contrast ×[0.5, 1.5];
    translation: integer shift up to `translation`·size with zero fill;
    cutout: one zero square of `cutout`·size per image."""

    def __init__(self, policy: str | Sequence[str] = DEFAULT_POLICY, seed: int = 0, translation: float = 0.125,
                 cutout: float = 0.5) -> None:
        self.policy = parse_policy(policy) if isinstance(policy, str) else tuple(policy)
        self.translation, self.cutout = float(translation), float(cutout)
        self.generator = torch.Generator().manual_seed(int(seed))

    # -- state (checkpointed with the run)
    def state_dict(self) -> dict:
        return {"policy": ",".join(self.policy), "rng": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("policy") != ",".join(self.policy):
            raise ValueError(f"augmentation policy in the saved state ({state.get('policy')!r}) differs from "
                             f"{','.join(self.policy)!r}")
        self.generator.set_state(state["rng"])

    def _rand(self, *shape: int, like: Tensor) -> Tensor:
        return torch.rand(*shape, generator=self.generator).to(device=like.device, dtype=like.dtype)

    def __call__(self, x: Tensor) -> Tensor:
        for p in self.policy:
            x = getattr(self, f"_{p}")(x)
        return x

    def _color(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        x = x + (self._rand(n, 1, 1, 1, like=x) - 0.5)
        mean = x.mean(dim=1, keepdim=True)
        x = (x - mean) * (self._rand(n, 1, 1, 1, like=x) * 2) + mean
        mean = x.mean(dim=[1, 2, 3], keepdim=True)
        return (x - mean) * (self._rand(n, 1, 1, 1, like=x) + 0.5) + mean

    def _translation(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        sh, sw = int(h * self.translation + 0.5), int(w * self.translation + 0.5)
        if sh == 0 and sw == 0:
            return x
        ty = torch.randint(-sh, sh + 1, (n, 1, 1), generator=self.generator).to(x.device)
        tx = torch.randint(-sw, sw + 1, (n, 1, 1), generator=self.generator).to(x.device)
        gy = torch.arange(h, device=x.device).view(1, h, 1)
        gx = torch.arange(w, device=x.device).view(1, 1, w)
        # index into a zero-padded copy: padded[y + ty + 1] is x[y + ty] or zero outside
        iy = (gy + ty + 1).clamp(0, h + 1).expand(n, h, w)
        ix = (gx + tx + 1).clamp(0, w + 1).expand(n, h, w)
        padded = torch.nn.functional.pad(x, [1, 1, 1, 1])
        bidx = torch.arange(n, device=x.device).view(n, 1, 1).expand(n, h, w)
        return padded.permute(0, 2, 3, 1)[bidx, iy, ix].permute(0, 3, 1, 2)

    def _cutout(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        ch, cw = int(h * self.cutout + 0.5), int(w * self.cutout + 0.5)
        oy = torch.randint(0, h + (1 - ch % 2), (n, 1, 1), generator=self.generator).to(x.device)
        ox = torch.randint(0, w + (1 - cw % 2), (n, 1, 1), generator=self.generator).to(x.device)
        gy = torch.arange(ch, device=x.device).view(1, ch, 1)
        gx = torch.arange(cw, device=x.device).view(1, 1, cw)
        iy = (gy + oy - ch // 2).clamp(0, h - 1).expand(n, ch, cw)
        ix = (gx + ox - cw // 2).clamp(0, w - 1).expand(n, ch, cw)
        bidx = torch.arange(n, device=x.device).view(n, 1, 1).expand(n, ch, cw)
        mask = torch.ones(n, h, w, device=x.device, dtype=x.dtype)
        mask[bidx, iy, ix] = 0
        return x * mask.unsqueeze(1)
