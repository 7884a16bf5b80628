"""`colorgan pretrain`: a base StyleGAN2 trained from scratch on an image folder (rosinality recipe:
non-saturating loss, lazy R1 and path length, style mixing, EMA generator), with differentiable
augmentation for small sets and bf16 autocast on GPU."""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from colorgan.checkpoint import load_checkpoint, resolve_checkpoint, save_checkpoint
from colorgan.data.folder import ImageFolder
from colorgan.discriminator import Discriminator
from colorgan.generator import Generator
from colorgan.options import option
from fastlora.functional import NonFiniteInput
from colorgan.train import state as st
from colorgan.train.augment import DiffAugment, parse_policy
from colorgan.train.data import BatchStream
from colorgan.train.distributed import DistInfo, barrier, broadcast_tensors, gather_objects
from colorgan.train.ema import copy_tensors, ema_decay_for, ema_update, module_tensors
from colorgan.train.loop import (CHECKPOINT_DIR, NonFiniteLoss, RunFolder, RunOptions, Timer, diverged, ensure_finite,
                                 every, format_losses, make_z, progress, resolve_amp, start_run)
from colorgan.train.losses import lazy_adam_params
from colorgan.train.steps import GANSteps, RegConfig

AUGMENT_AUTO_MAX_IMAGES = 5000


def parse_channels(text: str | None) -> dict[int, int] | None:
    """"4:64,8:64,16:32" → {4: 64, 8: 64, 16: 32}."""
    if text is None:
        return None
    try:
        return {int(k): int(v) for k, v in (p.split(":") for p in text.split(",") if p.strip())}
    except ValueError:
        raise ValueError(f"channels must look like 4:64,8:64,16:32 (resolution:channels), got {text!r}") from None


@dataclass(kw_only=True)
class PretrainConfig(RegConfig):
    """Everything that defines a pretraining run (saved as RUN/config.json)."""

    data: str = option(help="image folder (the source domain)")
    size: int = option(help="image size (power of two)")
    iter: int = option(20000, "iterations")
    batch: int = option(16, "batch per process")
    style_dim: int = option(512, "latent and style dimension")
    n_mlp: int = option(8, "mapping network layers")
    channel_multiplier: int = option(2, "StyleGAN2 channel multiplier")
    channels: Optional[dict] = option(None, "explicit channel table, e.g. 4:128,8:128,16:64,32:32",
                                      parse=parse_channels)
    augment: str = option("auto", "differentiable augmentation of D's inputs; auto = on for sets of <= 5000 images",
                          choices=("auto", "on", "off"))
    ema_kimg: float = option(10.0, "EMA half-life in thousands of images")
    sample_every: int = option(1000, "sample grid every N iterations")
    save_every: int = option(5000, "checkpoint + state every N iterations")
    init: Optional[str] = option(None, "start from this checkpoint's generator and discriminator (a colorgan "
                                 "checkpoint folder or shipped base of the same architecture) instead of random "
                                 "weights: continues training a base whose run folder is gone")
    compile: bool = option(False, "torch.compile the generator and discriminator for the D and G steps (the "
                           "regularisers stay eager); a few minutes of compiling, then faster steps on a CPU")

    def __post_init__(self) -> None:
        if self.augment not in ("auto", "on", "off"):
            raise ValueError(f"augment must be auto, on or off, got {self.augment!r}")
        parse_policy(self.augment_policy)
        for name in ("iter", "batch", "style_dim", "n_mlp", "d_reg_every", "g_reg_every", "n_sample"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")



def _build(cfg: PretrainConfig, device: torch.device) -> tuple[Generator, Discriminator, Generator]:
    G = Generator(cfg.size, cfg.style_dim, cfg.n_mlp, cfg.channel_multiplier, channels=cfg.channels)
    D = Discriminator(cfg.size, cfg.channel_multiplier, channels=cfg.channels)
    if cfg.init is not None:
        _init_from(cfg.init, G, D)
    G, D = G.to(device), D.to(device)
    g_ema = copy.deepcopy(G).eval()
    for p in g_ema.parameters():
        p.requires_grad_(False)
    return G, D, g_ema


def _init_from(ckpt: str, G: Generator, D: Discriminator) -> None:
    """Copy a checkpoint's EMA generator (into G, and so the new EMA) and discriminator into fresh models."""
    src_g, src_d, _ = load_checkpoint(ckpt, tasks=[])
    if src_g.config() != G.config() or src_d is None or src_d.config() != D.config():
        raise ValueError(f"init checkpoint {ckpt} does not have this run's architecture (generator {src_g.config()} "
                         f"vs {G.config()}{'' if src_d is not None else '; it has no discriminator'}); give the "
                         f"same size, style dim, mapping layers and channels")
    G.load_state_dict(src_g.state_dict())
    D.load_state_dict(src_d.state_dict())


def pretrain(cfg: Optional[PretrainConfig], out: str | Path, *, options: Optional[RunOptions] = None,
             overwrite: bool = False, resume: bool = False, changes: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Run (or with resume=True continue) a pretraining run in folder `out`; returns the summary.
    changes: on resume, settings to change (only "iter": a longer or shorter run)."""
    return start_run("pretrain", PretrainConfig, cfg, out, _pretrain, options=options, overwrite=overwrite,
                     resume=resume, changes=changes,
                     inputs=lambda c: [c.data, resolve_checkpoint(c.init) if c.init else None])


def _pretrain(cfg: PretrainConfig, run: RunFolder, info: DistInfo, options: RunOptions, resume: bool) -> dict:
    device = info.device
    amp = resolve_amp(options.amp, device)
    dataset = ImageFolder(cfg.data, cfg.size)
    use_aug = cfg.augment == "on" or (cfg.augment == "auto" and len(dataset) <= AUGMENT_AUTO_MAX_IMAGES)
    if not resume:
        run.write_config({**asdict(cfg), "n_images": len(dataset), "augment_resolved": use_aug,
                          "world_size": info.world_size})
    torch.manual_seed(cfg.seed)
    G, D, g_ema = (m.to(memory_format=options.memory_format()) for m in _build(cfg, device))
    broadcast_tensors(list(G.parameters()) + list(G.buffers()) + list(D.parameters()), info)
    copy_tensors(module_tensors(g_ema), module_tensors(G))

    g_lr, g_betas = lazy_adam_params(cfg.lr, cfg.g_reg_every)
    d_lr, d_betas = lazy_adam_params(cfg.lr, cfg.d_reg_every)
    g_optim = torch.optim.Adam(G.parameters(), lr=g_lr, betas=g_betas)
    d_optim = torch.optim.Adam(D.parameters(), lr=d_lr, betas=d_betas)
    gens = {"latent": torch.Generator().manual_seed(cfg.seed * 7919 + 1 + info.rank)}
    augment = DiffAugment(cfg.augment_policy, seed=cfg.seed * 7919 + 2 + info.rank) if use_aug else None
    stream = BatchStream(dataset, cfg.batch, cfg.seed, info)
    steps = GANSteps(G, D, list(G.parameters()), list(D.parameters()), g_optim, d_optim, cfg, gens["latent"],
                     device, info, augment, amp, cfg.backend, compile=cfg.compile)
    decay = ema_decay_for(cfg.batch * info.world_size, cfg.ema_kimg)
    sample_z = make_z(cfg.n_sample, cfg.style_dim, torch.Generator().manual_seed(cfg.seed + 12345), device)
    step = 0
    if resume:
        step = _restore(run, G, D, g_ema, g_optim, d_optim, gens, augment, stream, steps, info)
        run.info(f"resumed at step {step}")
    else:
        run.info(f"pretrain {cfg.size}px on {len(dataset)} images from {cfg.data}; augment={use_aug}; "
                 f"device={device}; world={info.world_size}")

    def snapshot(at: int) -> None:
        _snapshot(run, cfg, at, G, D, g_ema, g_optim, d_optim, gens, augment, stream, steps, info)

    timer = Timer()
    bar = progress(cfg.iter, step, "pretrain", options.progress and info.is_main)
    losses: dict[str, float] = {}
    stopped = False
    try:
        while step < cfg.iter:
            if options.stop_at is not None and step >= options.stop_at:
                stopped = True
                break
            G.train()
            now = _iteration(steps, cfg, stream.next_batch(device).contiguous(memory_format=options.memory_format()),
                             step)
            losses.update(now)
            ema_update(module_tensors(g_ema), module_tensors(G), decay)
            step += 1
            bar.update(1)
            bar.set_postfix_str(format_losses(losses), refresh=False)
            if every(step, cfg.log_every) or step == cfg.iter:
                run.log({"step": step, **now, "time": timer.elapsed()})
            if every(step, cfg.sample_every) or step == cfg.iter:
                _samples(run, g_ema, sample_z, f"{step:07d}.png", cfg.backend)
            if every(step, cfg.save_every) and step < cfg.iter:
                snapshot(step)
        snapshot(step)
    except (NonFiniteLoss, NonFiniteInput) as exc:
        raise diverged(run, f"iteration {step + 1}", exc, cfg.lr) from None
    finally:
        bar.close()
    return _finish(run, cfg, info, step, losses, timer.elapsed(), stopped)


def _iteration(steps: GANSteps, cfg: PretrainConfig, real: torch.Tensor, step: int) -> dict[str, float]:
    """One iteration of the rosinality recipe: D step, lazy R1, G step, lazy path length."""
    now = steps.d_step(real, steps.sample_latents(cfg.batch))
    if every(step, cfg.d_reg_every):
        now.update(steps.r1_step(real))
    now.update(steps.g_step(steps.sample_latents(cfg.batch)))
    if every(step, cfg.g_reg_every) and cfg.path_regularize > 0:
        now.update(steps.pl_step(cfg.batch))
    return now


def _finish(run: RunFolder, cfg: PretrainConfig, info: DistInfo, step: int, losses: dict, seconds: float,
            stopped: bool) -> dict:
    summary = {"kind": "pretrain", "step": step, "finished": step >= cfg.iter, "losses": losses,
               "seconds_this_invocation": seconds, "world_size": info.world_size,
               "checkpoint": str(run.path / CHECKPOINT_DIR)}
    if stopped:
        run.info(f"stopped at step {step} (--stop-at); continue with --resume {run.path}")
    else:
        run.info(f"finished {step} iterations")
    run.write_summary(summary)
    barrier(info)
    return summary


@torch.no_grad()
def _samples(run: RunFolder, g_ema: Generator, z: torch.Tensor, name: str, backend: str) -> None:
    if run.is_main:
        g_ema.eval()
        run.save_grid(g_ema(z, noise_mode="const", backend=backend), name)


def _snapshot(run: RunFolder, cfg: PretrainConfig, step: int, G, D, g_ema, g_optim, d_optim, gens, augment,
              stream, steps, info: DistInfo) -> None:
    """Write RUN/checkpoint (colorgan format: g_ema, d, g) and RUN/state/state.pt (everything else);
    NonFiniteLoss (nothing written) when a weight is NaN or infinite."""
    ensure_finite({"G": G, "D": D, "g_ema": g_ema})
    rng = gather_objects({"global": st.global_rng_state(), "gens": st.generator_states(gens),
                          "augment": augment.state_dict() if augment is not None else None,
                          "data": stream.state_dict()}, info)
    if info.is_main:
        g_ema.update_w_avg()
        save_checkpoint(run.path / CHECKPOINT_DIR, g_ema, D, g_train=G, overwrite=True,
                        source={"kind": "pretrain", "step": step, "data": cfg.data})
        st.save_state(run.state_file, {
            "kind": "pretrain", "step": step, "world_size": info.world_size,
            "g": G.state_dict(), "d": D.state_dict(), "g_ema": g_ema.state_dict(),
            "g_optim": g_optim.state_dict(), "d_optim": d_optim.state_dict(),
            "mean_path_length": steps.mean_path_length.detach().cpu(), "ranks": rng})
    barrier(info)


def _restore(run: RunFolder, G, D, g_ema, g_optim, d_optim, gens, augment, stream, steps, info: DistInfo) -> int:
    state = st.load_state(run.state_file)
    if state.get("kind") != "pretrain":
        raise ValueError(f"{run.state_file} is not a pretraining state")
    if state["world_size"] != info.world_size:
        raise ValueError(f"the run was saved with {state['world_size']} process(es); resume it with the same "
                         f"number (got {info.world_size})")
    G.load_state_dict(state["g"])
    D.load_state_dict(state["d"])
    g_ema.load_state_dict(state["g_ema"])
    g_optim.load_state_dict(state["g_optim"])
    d_optim.load_state_dict(state["d_optim"])
    steps.mean_path_length = state["mean_path_length"].to(info.device)
    mine = state["ranks"][info.rank]
    st.set_global_rng_state(mine["global"])
    st.set_generator_states(gens, mine["gens"])
    if augment is not None:
        augment.load_state_dict(mine["augment"])
    stream.load_state_dict(mine["data"])
    return int(state["step"])
