"""One GAN iteration's pieces (rosinality train.py order): D step, lazy R1, G step, lazy path
length. Shared by `pretrain` and `continual`; every random draw comes from explicit generators."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from colorgan.options import option
from colorgan.train.augment import DEFAULT_POLICY, DiffAugment
from fastlora.backend import BACKEND_HELP, BACKENDS, resolve_backend
from colorgan.train.distributed import DistInfo, all_mean, average_gradients
from colorgan.train.loop import autocast_ctx, checked, mixing_z, requires_grad, style_kwargs
from colorgan.train.losses import (d_logistic_loss, g_nonsaturating_loss, path_length_penalty, per_image_logits,
                                   r1_penalty)

# extra generator loss: (fake images, latents list, forward kwargs) -> {name: scalar tensor}
ExtraLoss = Callable[[Tensor, Sequence[Tensor], dict], dict[str, Tensor]]



@dataclass
class RegConfig:
    """Settings shared by pretraining and continual training, with the same defaults (their configs extend it):
    the learning rate, regularisation, style mixing, augmentation policy, sampling, logging, seed, backend."""

    lr: float = option(0.002, "learning rate (Adam, lazy-regularisation scaled)")
    r1: float = option(10.0, "R1 penalty weight (gamma)")
    path_regularize: float = option(2.0, "path-length regularisation weight (0: off)")
    path_batch_shrink: int = option(2, "path-length batch = batch / this")
    d_reg_every: int = option(16, "R1 every N iterations (lazy regularisation)")
    g_reg_every: int = option(4, "path length every N iterations (lazy regularisation)")
    mixing: float = option(0.9, "style-mixing probability")
    augment_policy: str = option(DEFAULT_POLICY, "augmentations, comma-separated")
    n_sample: int = option(16, "fixed latents in the sample grids")
    log_every: int = option(50, "log line every N iterations")
    seed: int = option(0, "seed of every random draw")
    backend: str = option("auto", BACKEND_HELP, choices=BACKENDS)

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        """The config saved in a run folder (keys that are not fields, such as n_images, are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class GANSteps:
    """Holds G (the trained generator), D, their trainable tensors and optimizers, the augmenter,
    the latent RNG stream and the path-length mean; each method runs one update."""

    def __init__(self, G: nn.Module, D: nn.Module, g_params: Sequence[Tensor], d_params: Sequence[Tensor],
                 g_optim: torch.optim.Optimizer, d_optim: torch.optim.Optimizer, reg: RegConfig,
                 gen: torch.Generator, device: torch.device, info: DistInfo, augment: Optional[DiffAugment] = None,
                 amp: str = "off", backend: str = "auto", compile: bool = False) -> None:
        self.G, self.D = G, D
        # with compile: torch.compile'd views of the same modules for the first-order passes (D and G steps):
        # the synthesis network (fed a w+ of fixed shape, so mixing does not recompile) and D. The
        # regularisers need double backward, which compiled graphs do not support, and stay eager.
        self.compiled = compile
        if compile:
            backend = resolve_backend(backend, next(G.parameters()))  # resolved once: no branch inside the graph
            # graphs per grad mode (D step: no grad through G), per mixing and per parameter state: more than
            # dynamo's default of 8 variants of one function
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 32)
        self.synthesis_main = torch.compile(G.synthesis) if compile else G.synthesis
        self.D_main = torch.compile(D) if compile else D
        self.g_params, self.d_params = list(g_params), list(d_params)
        self.g_optim, self.d_optim = g_optim, d_optim
        self.reg, self.gen, self.device, self.info = reg, gen, device, info
        self.augment, self.amp, self.backend = augment, amp, backend
        self.mean_path_length = torch.zeros((), device=device)

    # -- helpers
    def _aug(self, x: Tensor) -> Tensor:
        return self.augment(x) if self.augment is not None else x

    def _d(self, x: Tensor, patch: Optional[int], main: bool = True) -> Tensor:
        return (self.D_main if main else self.D)(self._aug(x), patch=patch).float()

    def sample_latents(self, n: int, anchors: Optional[Tensor] = None, anchor_std: float = 0.1) -> list[Tensor]:
        """Free latents with style mixing, or (anchors given) z near randomly chosen anchors."""
        dim = self.G.style_dim
        if anchors is None:
            return mixing_z(n, dim, self.reg.mixing, self.gen, self.device)
        idx = torch.randint(0, anchors.shape[0], (n,), generator=self.gen)
        z = anchors.cpu()[idx] + anchor_std * torch.randn(n, dim, generator=self.gen)
        return [z.to(self.device)]

    def generate(self, zs: Sequence[Tensor], return_latents: bool = False, main: bool = True):
        kw = style_kwargs(self.G, zs, self.gen)
        latent = self.G.latents(list(zs), inject_index=kw.get("inject_index"), backend=self.backend)
        synthesis = self.synthesis_main if main else self.G.synthesis
        image = synthesis(latent, noise_mode="random", noise=kw["noise"], backend=self.backend)
        return ((image, latent) if return_latents else image), kw

    def _step(self, optim: torch.optim.Optimizer, params: Sequence[Tensor]) -> None:
        average_gradients([p for p in params if p.grad is not None], self.info)
        optim.step()

    # -- updates
    def d_step(self, real: Tensor, zs: Sequence[Tensor], patch: Optional[int] = None) -> dict[str, float]:
        requires_grad(self.d_params, True)
        with torch.no_grad(), autocast_ctx(self.device, self.amp):
            fake, _ = self.generate(zs)
        with autocast_ctx(self.device, self.amp):
            fake_pred = self._d(fake.detach().float(), patch)
            real_pred = self._d(real, patch)
        loss = d_logistic_loss(real_pred, fake_pred)
        out = checked({"d": loss.item(), "real_score": real_pred.mean().item(), "fake_score": fake_pred.mean().item()})
        self.d_optim.zero_grad(set_to_none=True)
        loss.backward()
        self._step(self.d_optim, self.d_params)
        return out

    def r1_step(self, real: Tensor, patch: Optional[int] = None) -> dict[str, float]:
        requires_grad(self.d_params, True)
        real = real.detach().requires_grad_(True)
        real_pred = per_image_logits(self._d(real, patch, main=False))
        r1 = r1_penalty(real_pred, real)
        out = checked({"r1": r1.item()})
        self.d_optim.zero_grad(set_to_none=True)
        (self.reg.r1 / 2 * r1 * self.reg.d_reg_every + 0 * real_pred[0, 0]).backward()
        self._step(self.d_optim, self.d_params)
        return out

    def g_step(self, zs: Sequence[Tensor], patch: Optional[int] = None,
               extra: Optional[ExtraLoss] = None) -> dict[str, float]:
        requires_grad(self.d_params, False)
        with autocast_ctx(self.device, self.amp):
            fake, kw = self.generate(zs)
            fake_pred = self._d(fake, patch)
        loss = g_nonsaturating_loss(fake_pred)
        out = {"g": loss.item()}
        total = loss
        if extra is not None:
            for name, value in extra(fake.float(), zs, kw).items():
                total = total + value
                out[name] = value.item()
        checked(out)
        self.g_optim.zero_grad(set_to_none=True)
        total.backward()
        self._step(self.g_optim, self.g_params)
        requires_grad(self.d_params, True)
        return out

    def pl_step(self, batch: int) -> dict[str, float]:
        requires_grad(self.d_params, False)
        n = max(1, batch // max(1, self.reg.path_batch_shrink))
        zs = self.sample_latents(n)
        (fake, latents), _ = self.generate(zs, return_latents=True, main=False)
        if not latents.requires_grad:  # nothing upstream of w trains: no path-length gradient to apply
            return {}
        noise = torch.randn(fake.shape, generator=self.gen).to(fake)
        penalty, self.mean_path_length, lengths = path_length_penalty(fake, latents, self.mean_path_length, noise)
        out = checked({"path": penalty.item(), "path_length": lengths.mean().item()})
        weighted = self.reg.path_regularize * self.reg.g_reg_every * penalty
        if self.reg.path_batch_shrink > 1:
            weighted = weighted + 0 * fake[0, 0, 0, 0]
        self.g_optim.zero_grad(set_to_none=True)
        weighted.backward()
        self._step(self.g_optim, self.g_params)
        self.mean_path_length = all_mean(self.mean_path_length, self.info)
        requires_grad(self.d_params, True)
        return out
