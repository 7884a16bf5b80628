"""LPIPS (VGG16 variant) in plain PyTorch, and the intra-cluster LPIPS / B-LPIPS diversity metrics.

Weights come from a local file (safetensors, or a torch state dict readable with weights_only=True).
Expected state-dict layout ("colorgan" layout):

    features.{i}.weight / features.{i}.bias   VGG16 conv layers at torchvision's `vgg16().features` indices
                                               i = 0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28
    lin.{k}.weight                             k = 0..4, shape 1 x C_k x 1 x 1 (non-negative LPIPS layer weights)

Channel widths are read from the weights, so a narrow network with the same layout works too (tests use one).
The layout of the `lpips` package's full model (`net.slice{s}.{i}.*`, `lin{k}.model.1.weight`) is accepted as well.
To produce the file: take torchvision's VGG16 ImageNet weights (`vgg16().features` state dict, prefixed
`features.`) and the LPIPS linear weights shipped in the PyPI `lpips` package (`lpips/weights/v0.1/vgg.pth`,
keys `lin{k}.model.1.weight`), rename the latter to `lin.{k}.weight` and save both with safetensors.
`combine_lpips_weights` does that from two local files.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from fastlora.io import load_safetensors, load_torch_file

VGG_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
VGG_POOL_AFTER = (2, 7, 14, 21)  # conv index after whose ReLU a 2x2 max-pool follows (i.e. the features tapped)
VGG_TAPS = (2, 7, 14, 21, 28)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (by the conv index before the ReLU)
# LPIPS input normalisation for images in [-1, 1]
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)

LPIPS_HELP = (
    "LPIPS needs VGG16 + LPIPS linear weights as a local file (--lpips PATH); see colorgan/metrics/lpips.py or "
    "the README section 'LPIPS weights' for the expected layout and how to build it."
)


class LPIPS(nn.Module):
    """LPIPS distance with a VGG16-layout backbone: unit-normalised features at 5 taps, squared differences,
    non-negative 1x1 weighting, spatial mean, summed over taps. Inputs are N x 3 x H x W in [-1, 1]."""

    def __init__(self, conv_weights: dict[int, tuple[torch.Tensor, torch.Tensor]], lin_weights: Sequence[torch.Tensor]) -> None:
        super().__init__()
        missing = [i for i in VGG_CONV_INDICES if i not in conv_weights]
        if missing:
            raise ValueError(f"LPIPS weights lack VGG16 conv layers at features indices {missing}")
        if len(lin_weights) != len(VGG_TAPS):
            raise ValueError(f"expected {len(VGG_TAPS)} LPIPS linear layers, got {len(lin_weights)}")
        self.convs = nn.ModuleDict()
        for i in VGG_CONV_INDICES:
            w, b = conv_weights[i]
            conv = nn.Conv2d(w.shape[1], w.shape[0], w.shape[2], padding=w.shape[2] // 2)
            conv.weight.data.copy_(w)
            conv.bias.data.copy_(b)
            self.convs[str(i)] = conv
        for k, (tap, lw) in enumerate(zip(VGG_TAPS, lin_weights)):
            c = self.convs[str(tap)].out_channels
            if tuple(lw.shape) != (1, c, 1, 1):
                raise ValueError(f"lin.{k}.weight: expected shape (1, {c}, 1, 1), got {tuple(lw.shape)}")
        self.register_buffer("lin", torch.cat([lw.reshape(-1) for lw in lin_weights]).float())
        self._lin_sizes = [lw.numel() for lw in lin_weights]
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Unit-normalised (over channels) activations at the 5 taps."""
        h = (x.float() - self.shift) / self.scale
        taps = []
        for i in VGG_CONV_INDICES:
            h = F.relu(self.convs[str(i)](h))
            if i in VGG_TAPS:
                taps.append(h / (h.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10))
            if i in VGG_POOL_AFTER:
                h = F.max_pool2d(h, 2, 2)
        return taps

    def distance_from_features(self, fa: list[torch.Tensor], fb: list[torch.Tensor]) -> torch.Tensor:
        """LPIPS between feature lists (broadcasting over the batch dimension)."""
        total = 0.0
        for w, a, b in zip(self.lin.split(self._lin_sizes), fa, fb):
            total = total + ((a - b).pow(2) * w.view(1, -1, 1, 1)).sum(dim=1).mean(dim=(1, 2))
        return total

    @torch.no_grad()
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.distance_from_features(self.features(a), self.features(b))


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return load_safetensors(path)
    sd = load_torch_file(path, trust_hint="save its tensors with torch.save(state_dict) or as safetensors and pass that")
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ValueError(f"{str(path)!r}: expected a state dict (name -> tensor), got {type(sd).__name__}")
    return sd


def _normalise_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        m = re.fullmatch(r"(?:module\.)?net\.slice\d\.(\d+)\.(weight|bias)", k)
        if m:
            out[f"features.{m.group(1)}.{m.group(2)}"] = v
            continue
        m = re.fullmatch(r"(?:module\.)?lin(\d)\.model\.1\.weight", k)
        if m:
            out[f"lin.{m.group(1)}.weight"] = v
            continue
        out[k.removeprefix("module.")] = v
    return out


def load_lpips(path: str | os.PathLike, device: str | torch.device = "cpu") -> LPIPS:
    """Build an LPIPS module from a weights file in the layout described in this module's docstring."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"LPIPS weights file {str(path)!r} not found. {LPIPS_HELP}")
    sd = _normalise_keys(_read_state_dict(path))
    conv, lins = {}, []
    missing = []
    for i in VGG_CONV_INDICES:
        w, b = sd.get(f"features.{i}.weight"), sd.get(f"features.{i}.bias")
        if w is None or b is None:
            missing.append(f"features.{i}.weight/bias")
        else:
            conv[i] = (w.float(), b.float())
    for k in range(len(VGG_TAPS)):
        lw = sd.get(f"lin.{k}.weight")
        if lw is None:
            missing.append(f"lin.{k}.weight")
        else:
            lins.append(lw.float())
    if missing:
        raise ValueError(f"{str(path)!r} is missing LPIPS keys {missing[:6]}{' ...' if len(missing) > 6 else ''}; "
                         f"found keys like {sorted(sd)[:6]}. {LPIPS_HELP}")
    return LPIPS(conv, lins).to(device)


def combine_lpips_weights(vgg_path: str | os.PathLike, lin_path: str | os.PathLike, out: str | os.PathLike) -> None:
    """Write a colorgan-layout safetensors file from a torchvision VGG16 state dict (keys `features.{i}.*`,
    other keys ignored) and the `lpips` package's `vgg.pth` (keys `lin{k}.model.1.weight`)."""
    from safetensors.torch import save_file

    sd = {k: v for k, v in _normalise_keys(_read_state_dict(Path(vgg_path))).items() if k.startswith("features.")}
    sd.update({k: v for k, v in _normalise_keys(_read_state_dict(Path(lin_path))).items() if k.startswith("lin.")})
    missing = [f"features.{i}.weight" for i in VGG_CONV_INDICES if f"features.{i}.weight" not in sd]
    missing += [f"lin.{k}.weight" for k in range(len(VGG_TAPS)) if f"lin.{k}.weight" not in sd]
    if missing:
        raise ValueError(f"cannot combine LPIPS weights: missing {missing} in {str(vgg_path)!r} / {str(lin_path)!r}")
    save_file({k: v.contiguous().float() for k, v in sd.items()}, str(out))


@torch.no_grad()
def _feats(model: LPIPS, imgs: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    parts = [model.features(imgs[i:i + batch_size].to(model.shift.device)) for i in range(0, imgs.shape[0], batch_size)]
    return [torch.cat([p[k] for p in parts]) for k in range(len(VGG_TAPS))]


@torch.no_grad()
def cluster_lpips(model: LPIPS, fakes: torch.Tensor, shots: torch.Tensor, *, max_members: int = 50,
                  seed: int = 0, batch_size: int = 32, progress: bool = True) -> dict:
    """Intra-cluster LPIPS and B-LPIPS.

    Each fake is assigned to the training shot nearest in LPIPS (ties -> lower index). Per cluster, at most
    `max_members` members are kept (seeded draw, numpy.random.default_rng([seed, cluster])), and their mean
    pairwise LPIPS is taken. intra_lpips = mean over clusters with >= 2 kept members; b_lpips = sum over
    clusters of -p log10(p) * mean pairwise LPIPS, with p = cluster size / number of fakes.
    """
    from tqdm import tqdm

    if fakes.ndim != 4 or shots.ndim != 4 or fakes.shape[1:] != shots.shape[1:]:
        raise ValueError(f"fakes and shots must be N x 3 x H x W of the same size, got {tuple(fakes.shape)} and {tuple(shots.shape)}")
    n, k = fakes.shape[0], shots.shape[0]
    if n < 1 or k < 1:
        raise ValueError(f"need at least one fake and one shot, got {n} and {k}")
    shot_f = _feats(model, shots, batch_size)
    dist = torch.empty(n, k, dtype=torch.float64)
    for s in tqdm(range(0, n, batch_size), desc="lpips assign", disable=not progress, leave=False):
        ff = model.features(fakes[s:s + batch_size].to(model.shift.device))
        for j in range(k):
            dist[s:s + ff[0].shape[0], j] = model.distance_from_features(ff, [t[j:j + 1] for t in shot_f]).double().cpu()
    assign = dist.argmin(dim=1).numpy()
    clusters = []
    b_lpips, means = 0.0, []
    for j in range(k):
        members = np.flatnonzero(assign == j)
        size = int(members.size)
        if size > max_members:
            members = np.sort(np.random.default_rng([seed, j]).choice(members, max_members, replace=False))
        mean_pair = None
        if members.size >= 2:
            mf = _feats(model, fakes[torch.from_numpy(members)], batch_size)
            ii, jj = np.triu_indices(members.size, 1)
            vals = []
            for s in range(0, ii.size, 256):
                a = [t[torch.from_numpy(ii[s:s + 256])] for t in mf]
                b = [t[torch.from_numpy(jj[s:s + 256])] for t in mf]
                vals.append(model.distance_from_features(a, b).double().cpu())
            mean_pair = float(torch.cat(vals).mean())
            means.append(mean_pair)
            p = size / n
            b_lpips += -p * np.log10(p) * mean_pair
        clusters.append({"shot": j, "size": size, "kept": int(members.size), "mean_pairwise_lpips": mean_pair})
    return {"intra_lpips": float(np.mean(means)) if means else float("nan"), "b_lpips": float(b_lpips),
            "n_fakes": int(n), "n_shots": int(k), "max_members": max_members, "seed": seed, "clusters": clusters}
