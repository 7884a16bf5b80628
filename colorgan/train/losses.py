"""StyleGAN2 losses (rosinality train.py formulas): logistic D loss, non-saturating G loss,
R1 gradient penalty and path-length regularisation."""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def d_logistic_loss(real_pred: Tensor, fake_pred: Tensor) -> Tensor:
    """softplus(−D(x)).mean() + softplus(D(G(z))).mean(); logits of any shape (image or patch)."""
    return F.softplus(-real_pred).mean() + F.softplus(fake_pred).mean()


def g_nonsaturating_loss(fake_pred: Tensor) -> Tensor:
    """softplus(−D(G(z))).mean()."""
    return F.softplus(-fake_pred).mean()


def per_image_logits(pred: Tensor) -> Tensor:
    """Patch logits [N, 1, h, w] (or image logits [N, 1]) averaged per image → [N, 1]."""
    return pred.reshape(pred.shape[0], -1).mean(1, keepdim=True)


def r1_penalty(real_pred: Tensor, real_img: Tensor) -> Tensor:
    """R1: mean over images of ‖∂ΣD(x)/∂x‖² (graph kept for the backward through the gradient).

    real_img must require grad and real_pred must depend on it."""
    (grad,) = torch.autograd.grad(real_pred.sum(), real_img, create_graph=True)
    return grad.square().reshape(grad.shape[0], -1).sum(1).mean()


def path_length_penalty(fake_img: Tensor, latents: Tensor, mean_path_length: Tensor, noise: Tensor,
                        decay: float = 0.01) -> tuple[Tensor, Tensor, Tensor]:
    """Path-length regulariser. `noise` ~ N(0,1) of fake_img's shape (drawn by the caller from its
    own generator); returns (penalty, updated mean path length (detached), per-sample lengths).

    lengths = sqrt(mean_l ‖∂Σ(img·noise/√(HW))/∂w_l‖²); mean ← mean + decay·(lengths.mean() − mean);
    penalty = mean((lengths − mean)²)."""
    if noise.shape != fake_img.shape:
        raise ValueError(f"noise must have the image's shape {list(fake_img.shape)}, got {list(noise.shape)}")
    scaled = noise / math.sqrt(fake_img.shape[2] * fake_img.shape[3])
    (grad,) = torch.autograd.grad((fake_img * scaled).sum(), latents, create_graph=True)
    lengths = torch.sqrt(grad.square().sum(2).mean(1))
    path_mean = mean_path_length + decay * (lengths.mean() - mean_path_length)
    penalty = (lengths - path_mean).square().mean()
    return penalty, path_mean.detach(), lengths


def lazy_adam_params(lr: float, reg_every: Optional[int], betas: tuple[float, float] = (0.0, 0.99)
                     ) -> tuple[float, tuple[float, float]]:
    """StyleGAN2 lazy-regularisation correction: lr·c and betas**c with c = k/(k+1) (k = reg interval)."""
    if not reg_every:
        return lr, betas
    c = reg_every / (reg_every + 1)
    return lr * c, (betas[0] ** c, betas[1] ** c)


def correspondence_loss(source: list[Tensor], adapted: list[Tensor]) -> Tensor:
    """Cross-domain correspondence (after Ojha et al., 2021): for each sample i of a batch, the softmax over
    j ≠ i of the cosine similarities between sample i's and sample j's features, in the source generator and in
    the adapted one on the same latents; the loss is KL(source ‖ adapted), averaged over samples and layers.
    It keeps the adapted samples as distinct from each other, and alike in the same way, as their sources.

    source, adapted: per layer, features [N, ...] (N ≥ 2); source carries no gradient."""
    if not source or len(source) != len(adapted) or source[0].shape[0] < 2:
        raise ValueError("correspondence_loss needs the same layers from both generators and at least 2 samples")
    n = source[0].shape[0]
    off = ~torch.eye(n, dtype=torch.bool, device=source[0].device)

    def similarities(f: Tensor) -> Tensor:
        f = F.normalize(f.float().flatten(1), dim=1)
        return (f @ f.t())[off].view(n, n - 1)

    total = source[0].new_zeros((), dtype=torch.float32)
    for s, a in zip(source, adapted):
        total = total + F.kl_div(F.log_softmax(similarities(a), 1), F.softmax(similarities(s), 1),
                                 reduction="batchmean")
    return total / len(source)
