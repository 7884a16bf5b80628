"""Losses of the baselines: LFS-GAN's cluster-wise mode seeking (over each cluster's actual
members), EWC's Fisher penalty (Fisher computed once on the source model) and Lifelong GAN's
L1 distillation from the previous task's generator."""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import fastlora
from colorgan.generator import Generator
from colorgan.train.losses import correspondence_loss

Distance = Callable[[Tensor, Tensor], Tensor]  # (fakes [M,...], reals [N,...]) -> [M, N]


def pixel_distance(fakes: Tensor, reals: Tensor) -> Tensor:
    """Mean squared pixel difference of every (fake, real) pair [M, N]."""
    a, b = fakes.flatten(1).float(), reals.flatten(1).float()
    return torch.cdist(a, b).square() / a.shape[1]


def lpips_distance(model: nn.Module) -> Distance:
    """Pairwise LPIPS [M, N] with a colorgan.metrics.lpips.LPIPS model."""
    def dist(fakes: Tensor, reals: Tensor) -> Tensor:
        m, n = fakes.shape[0], reals.shape[0]
        a = fakes.repeat_interleave(n, 0)
        b = reals.repeat(m, 1, 1, 1)
        return model(a, b).reshape(m, n)
    return dist


def _mean_l1(x: Tensor, p: Tensor, q: Tensor) -> Tensor:
    """Mean absolute difference between rows p and q of x (per pair) [P]."""
    return (x[p] - x[q]).abs().flatten(1).mean(1)


def mode_seeking_loss(z: Tensor, w: Tensor, images: Tensor, feats: Sequence[Tensor], assign: Tensor,
                      eps: float = 1e-5) -> Optional[Tensor]:
    """LFS-GAN's cluster-wise mode-seeking loss, over each cluster's actual members.

    z [M, D], w [M, D], images [M, 3, H, W], feats: per-layer [M, ...] maps, assign [M]: index of
    each fake's nearest real image. For every pair (p, q) of fakes in the same cluster the ratios
    ‖w_p−w_q‖/‖z_p−z_q‖ + mean_l ‖f_l,p−f_l,q‖/‖w_p−w_q‖ + ‖x_p−x_q‖/‖w_p−w_q‖ (mean-L1 distances)
    are summed; the loss is 1/(sum / #clusters with ≥ 2 members + eps). None when no cluster has 2 members."""
    total, clusters = None, 0
    for r in torch.unique(assign).tolist():
        members = torch.nonzero(assign == r).flatten()
        if members.numel() < 2:
            continue
        clusters += 1
        iu = torch.triu_indices(members.numel(), members.numel(), 1, device=members.device)
        p, q = members[iu[0]], members[iu[1]]
        dw = _mean_l1(w, p, q)
        ratio = dw / _mean_l1(z, p, q)
        ratio = ratio + torch.stack([_mean_l1(f, p, q) / dw for f in feats]).mean(0)
        ratio = ratio + _mean_l1(images, p, q) / dw
        s = ratio.sum()
        total = s if total is None else total + s
    if total is None:
        return None
    return 1.0 / (total / clusters + eps)


class FeatureTap:
    """Collects the outputs of the generator's styled convs (conv1, convs.*) during a forward."""

    def __init__(self, G: Generator) -> None:
        self.feats: list[Tensor] = []
        mods = [G.conv1, *G.convs]
        self.handles = [m.register_forward_hook(lambda _m, _i, out: self.feats.append(out)) for m in mods]

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def generator_mode_seeking(G: Generator, reals: Tensor, n: int, gen: torch.Generator, distance: Distance,
                           backend: str = "auto") -> Optional[Tensor]:
    """Draw n latents, generate (collecting features), assign fakes to their nearest real image
    (no gradient), and return `mode_seeking_loss` (None when no cluster has two members)."""
    device = reals.device
    z = torch.randn(n, G.style_dim, generator=gen).to(device)
    noise = G.make_noise(n, generator=gen)
    w = G.mapping(z, backend=backend)
    tap = FeatureTap(G)
    try:
        images = G.synthesis(w, noise=noise, backend=backend)
    finally:
        tap.close()
    with torch.no_grad():
        assign = distance(images.detach(), reals).argmin(1)
    return mode_seeking_loss(z, w, images, tap.feats, assign)


def compute_fisher(G: Generator, D: nn.Module, batches: int, batch: int, gen: torch.Generator,
                   backend: str = "auto") -> list[Tensor]:
    """Diagonal Fisher of G's parameters: mean over `batches` of the squared gradient of the
    discriminator's log-likelihood of generated samples, mean_b log σ(D(G(z_b)))."""
    params = list(G.parameters())
    saved = [p.requires_grad for p in params]
    d_saved = [p.requires_grad for p in D.parameters()]
    for p in params:
        p.requires_grad_(True)
    for p in D.parameters():
        p.requires_grad_(False)
    fisher = [torch.zeros_like(p) for p in params]
    device = G.device
    try:
        for _ in range(batches):
            z = torch.randn(batch, G.style_dim, generator=gen).to(device)
            img = G(z, noise=G.make_noise(batch, generator=gen), backend=backend)
            loglik = -F.softplus(-D(img)).mean()
            grads = torch.autograd.grad(loglik, params, allow_unused=True)
            for f, g in zip(fisher, grads):
                if g is not None:
                    f.add_(g.detach().square())
    finally:
        for p, s in zip(params, saved):
            p.requires_grad_(s)
        for p, s in zip(D.parameters(), d_saved):
            p.requires_grad_(s)
    return [f / batches for f in fisher]


def ewc_penalty(params: Sequence[Tensor], source: Sequence[Tensor], fisher: Sequence[Tensor], weight: float) -> Tensor:
    """weight · Σ_i F_i (θ_i − θ_src,i)²."""
    total = sum(((p - s).square() * f).sum() for p, s, f in zip(params, source, fisher))
    return weight * total


def distill_loss(fake: Tensor, previous: Generator, zs: Sequence[Tensor], kw: dict, backend: str = "auto") -> Tensor:
    """Lifelong GAN distillation: L1 between this generator's and the previous one's images on the
    same latents, noise and mixing cut."""
    with torch.no_grad():
        target = previous(list(zs), noise_mode="random", backend=backend, **kw)
    return (fake - target.float()).abs().mean()


def adapter_correspondence(G: Generator, task: str, z: Tensor, noise: Sequence[Tensor], backend: str = "auto") -> Tensor:
    """Cross-domain correspondence of `task`'s adapters: the styled convs' features of the base (adapters off,
    no gradient) against those of the adapted generator, on the same latents `z` and `noise`
    (losses.correspondence_loss). G's active task is `task` afterwards."""
    kw = dict(noise_mode="random", noise=noise, backend=backend, return_features=True)
    fastlora.set_task(G, None)
    try:
        with torch.no_grad():
            _, source = G.synthesis(G.latents([z], backend=backend), **kw)
    finally:
        fastlora.set_task(G, task)
    _, adapted = G.synthesis(G.latents([z], backend=backend), **kw)
    return correspondence_loss(source, adapted)
