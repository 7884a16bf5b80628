"""`colorgan train`: continual few-shot adaptation of a frozen base, one task after another.

Adapter methods ("color": CoLoR-GAN, "lfs": LFS-GAN) add fresh adapters per task to the frozen
base (the checkpoint's EMA generator) and train only them and the discriminator; every task ends
up in one bank (RUN/checkpoint). The full fine-tuning baselines ("ewc", "distill") keep one
generator per task (RUN/checkpoints/<task>). Recipe (docs/design.md §4): every `subspace_freq`-th
iteration latents near fixed anchors with the image-level D output, otherwise free latents with
style mixing and a patch-level output; lazy R1 and path length; lazy-regularisation Adam.
"""
from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import Tensor

import fastlora
from colorgan.checkpoint import (check_task_name, load_checkpoint, parameter_report, read_checkpoint_config,
                                 resolve_checkpoint, save_checkpoint)
from colorgan.data.folder import ImageFolder, list_images
from colorgan.discriminator import Discriminator
from colorgan.generator import Generator
from colorgan.metrics.lpips import load_lpips
from colorgan.options import option
from fastlora.functional import NonFiniteInput
from colorgan.train import baselines as bl
from colorgan.train import near, strength
from colorgan.train import state as st
from colorgan.train.augment import DiffAugment, parse_policy
from colorgan.train.data import BatchStream
from colorgan.train.distributed import DistInfo, barrier, gather_objects
from colorgan.train.ema import copy_tensors, ema_update, warmup_decay
from colorgan.train.loop import (CHECKPOINT_DIR, PER_TASK_DIR, NonFiniteLoss, RunFolder, RunOptions, Timer, diverged,
                                 ensure_finite, every, format_losses, make_z, progress, resolve_amp, start_run)
from colorgan.train.losses import lazy_adam_params
from colorgan.train.per_task import PER_TASK, parse_per_task, weight_or_spec
from colorgan.train.steps import ExtraLoss, GANSteps, RegConfig

METHODS = ("color", "lfs", "ewc", "distill")
ADAPTER_METHODS = ("color", "lfs")
DEFAULT_KINDS = {"color": "left-linear", "lfs": "left"}  # color's: validation round 16 (docs/benchmarks.md)


def parse_tasks(text: str | Sequence[str]) -> list[list[str]]:
    """"name=DIR,name=DIR" (or a list of "name=DIR") → [[name, dir], ...], names checked and unique."""
    items = [p for t in ([text] if isinstance(text, str) else text) for p in t.split(",") if p.strip()]
    if not items:
        raise ValueError("tasks needs at least one name=DIR")
    out, seen = [], set()
    for item in items:
        name, sep, folder = item.strip().partition("=")
        if not sep or not name or not folder:
            raise ValueError(f"bad task {item!r} in tasks: expected name=DIR (e.g. twemoji=data/twemoji/train)")
        check_task_name(name)
        if name in seen:
            raise ValueError(f"task {name!r} appears twice in tasks")
        seen.add(name)
        out.append([name, folder])
    return out


@dataclass(kw_only=True)
class TrainConfig(RegConfig):
    """Everything that defines a continual run (saved as RUN/config.json)."""

    ckpt: str = option(help="base checkpoint folder (colorgan format, with a discriminator) or a shipped base name")
    tasks: list = option(help="name=DIR,name=DIR,... (trained in this order)")
    method: str = option("color", "color: per-task adapters (of --kind) in CoLoR-GAN's loop; lfs: LeFT + mode "
                         "seeking; ewc / distill: full "
                         "fine-tuning with the Fisher penalty / Lifelong-GAN distillation", choices=METHODS)
    kind: Optional[str] = option(None, "adapter kind (default for color: left-linear, LeFT on the linear layers and "
                                 "LLoRA on the convs, chosen on the validation tasks, or llora with --compat "
                                 "upstream; llora: CoLoR-GAN's form everywhere; lfs: left)", choices=fastlora.KINDS)
    rank: int = option(1, "adapter rank")
    alpha_conv: float = option(0.1, "conv adapter scale", flags=("--alpha-conv", "--lora_alpha_conv"))
    alpha_linear: float = option(0.1, "linear (style, mapping) LoRA scale (0.1: chosen on the validation tasks; "
                                 "LeFT's linear form has none)",
                                 flags=("--alpha-linear", "--lora_alpha_fc"))
    act: str = option("inner", "adapter activation (LLoRA: both/inner/none; LeFT: inner/none)",
                      choices=("both", "inner", "none"))
    compat: str = option("default", "upstream: the published adapter initialisation and alpha routing",
                         choices=("default", "upstream"))
    iter: int = option(3002, "iterations per task")
    batch: int = option(4, "batch per process")
    subspace_freq: int = option(4, "every N-th iteration uses anchor latents")
    subspace_std: float = option(0.1, "spread of the latents around the anchors")
    n_anchors: int = option(10, "anchor latents", flags=("--n-anchors", "--n_train"))
    highp: int = option(1, "patch heads drawn from (1: the first)")
    augment: bool = option(False, "differentiable augmentation of D's inputs")
    d_freeze: int = option(0, "FreezeD: the discriminator's first N layers from the image (the from-RGB layer, "
                              "then one block per resolution) keep the base's weights (0: D trains fully)")
    mapping_lr_mul: float | str = option(1.0, "learning-rate multiplier for the mapping network's adapters (adapter "
                                         "methods; 0: they stay at the identity, the base's mapping); per task: "
                                         "e.g. flags=3,twemoji=0.3 (tasks not named: 1, or a bare multiplier in "
                                         "the list)", parse=weight_or_spec)
    style_lr_mul: float | str = option(1.0, "learning-rate multiplier for the style (modulation) affines' adapters "
                                       "(adapter methods): below 1 the adapted styles stay nearer the base's (0: "
                                       "they stay at the identity); per task as --mapping-lr-mul",
                                       parse=weight_or_spec)
    style_anchor: float | str = option(0.0, "weight of a penalty on how far the style affines' adapters move their "
                                       "layers (mean relative squared change of weight and bias, adapter methods): "
                                       "the styles move only where the adversarial loss keeps pushing (0: off); "
                                       "per task: e.g. twemoji=30,openmoji=30 (tasks not named: 0, or a bare "
                                       "weight in the list)", parse=weight_or_spec)
    mapping_anchor: float | str = option(0.0, "the same penalty on the mapping network's adapters (adapter "
                                         "methods): the latents move only where the adversarial loss keeps "
                                         "pushing (0: off); per task as --style-anchor", parse=weight_or_spec)
    near_anchor: float = option(30.0, "--method color: tasks whose shots lie near what the base already makes "
                                f"(their KID x 10^3 against the base's samples below {near.NEAR_GAP:g}, measured with the Inception "
                                "network before training; a near style such as Twemoji on a Noto base) train with "
                                "--style-anchor and --mapping-anchor at least this weight (30: chosen on the "
                                "validation tasks; 0: off). Without an Inception network installed the check is "
                                "skipped and the log says so")
    strength: float | str = option(strength.AUTO, "adapter methods: the fraction of each task's trained effect it "
                                   "keeps, saved with the task (every adapted weight and bias W + s(W_task - W); "
                                   "1: as trained, 0: the base). auto: once the task has trained, of 0, 0.25, 0.5, "
                                   "0.75 and 1 the one whose samples lie nearest the task's shots by KID, measured "
                                   "with the Inception network (chosen on the validation tasks); without a network "
                                   "installed, or for LeFT convolutions (kind left), 1 and the log says so. Or a "
                                   "number in [0, 1]; per task: e.g. flags=1,twemoji=auto (tasks not named: auto, "
                                   "or a bare value in the list)", parse=weight_or_spec)
    mapping_adapters: str = option("keep", "adapter methods: keep: the mapping network's adapters are part of the "
                                   "task; drop: they train with the task (taking up the shots' content) and are "
                                   "reset to the identity when it ends, so the task samples the base's latents "
                                   "through its own style and conv adapters (keep suits a category the shots "
                                   "show, such as flags; drop a new style of the source's content); per task: "
                                   "e.g. flags=keep,openmoji=drop (tasks not named: keep, or a bare keep/drop "
                                   "in the list)")
    conv_max_res: int = option(0, "adapter methods: conv adapters train only in synthesis layers up to this "
                               "resolution (4, 8, ...); finer layers keep theirs at their initial values, the "
                               "identity (0: every resolution)")
    ema_decay: float = option(0.995, "EMA decay of the trained tensors")
    ema_warmup: bool = option(True, "EMA warm-up: the decay at task iteration t is min(--ema-decay, "
                                    "(1+t)/(10+t)); --no-ema-warmup: a fixed decay (runs saved before this option "
                                    "existed keep the fixed decay)")
    correspondence: float = option(0.0, "weight of the cross-domain correspondence loss (adapter methods): keeps "
                                   "the adapted samples' pairwise similarities, layer by layer, like the base's on "
                                   "the same latents (0: off)")
    ms_weight: float = option(1.0, "lfs: mode-seeking loss weight")
    ms_batch_mult: int = option(4, "lfs: fakes per G step = this x batch")
    lpips: Optional[str] = option(None, "lfs: LPIPS weights file for the cluster assignment (default: pixel "
                                  "distance)")
    ewc_lambda: float = option(5e8, "ewc: penalty weight")
    fisher_batches: int = option(16, "ewc: batches for the Fisher information")
    distill_weight: float = option(1.0, "distill: L1 distillation weight")
    sample_every: int = option(500, "sample grid every N iterations")
    save_every: int = option(1000, "checkpoint + state every N iterations")

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        self.tasks = parse_tasks([f"{n}={d}" for n, d in self.tasks]) if self.tasks and \
            isinstance(self.tasks[0], (list, tuple)) else parse_tasks(self.tasks)
        if self.kind is None and self.method in ADAPTER_METHODS:
            # --compat upstream reproduces the published CoLoR-GAN, whose adapters are LoRA + LLoRA
            self.kind = "llora" if self.method == "color" and self.compat == "upstream" else DEFAULT_KINDS[self.method]
        parse_policy(self.augment_policy)
        for name in ("iter", "batch", "d_reg_every", "g_reg_every", "subspace_freq", "n_anchors", "highp",
                     "n_sample", "ms_batch_mult", "fisher_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        per_task_settings(asdict(self), [task for task, _ in self.tasks])  # validate the per-task settings now
        if not (math.isfinite(self.near_anchor) and self.near_anchor >= 0):
            raise ValueError(f"near_anchor must be a finite number >= 0, got {self.near_anchor}")
        if self.conv_max_res != 0 and (self.conv_max_res < 4 or self.conv_max_res & (self.conv_max_res - 1)):
            raise ValueError(f"conv_max_res must be 0 or a power of two >= 4, got {self.conv_max_res}")
        if self.d_freeze < 0:
            raise ValueError(f"d_freeze must be >= 0, got {self.d_freeze}")
        if self.correspondence < 0 or (self.correspondence > 0 and self.batch < 2):
            raise ValueError(f"correspondence must be >= 0 (and needs batch >= 2), got {self.correspondence} with "
                             f"batch {self.batch}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        if self.method in ADAPTER_METHODS:
            self.adapter_config()  # validate kind/rank/act/compat now
        below = sorted(t for t, s in self.per_task("strength").items() if s not in (strength.AUTO, 1.0))
        if below and not self.exact_strength():
            raise ValueError(f"strength below 1 (task {below[0]!r}) needs adapters with an exact strength: "
                             f"--method color or lfs with a kind other than left, got method {self.method!r}"
                             + (f", kind {self.kind!r}" if self.kind else ""))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """The config saved in a run folder; runs saved before the EMA warm-up, the learning-rate multipliers or
        the near check or the strength existed keep what they ran with (the fixed decay, multipliers 1, no near
        check, strength 1)."""
        return super().from_dict({"ema_warmup": False, "mapping_lr_mul": 1.0, "style_lr_mul": 1.0,
                                  "mapping_adapters": "keep", "near_anchor": 0.0, "strength": 1.0, **d})

    def per_task(self, name: str) -> dict[str, Any]:
        """A per-task setting (one of `PER_TASK`: --mapping-adapters, the anchors, the learning-rate multipliers)
        resolved: {task: value}."""
        return parse_per_task(name, getattr(self, name), [task for task, _ in self.tasks],
                              TrainConfig.__dataclass_fields__[name].default)

    def adapter_config(self) -> fastlora.AdapterConfig:
        return fastlora.AdapterConfig(kind=self.kind, rank=self.rank, alpha_conv=self.alpha_conv,
                                      alpha_linear=self.alpha_linear, act=self.act, compat=self.compat)

    def exact_strength(self) -> bool:
        """Whether the tasks can keep a strength below 1 (adapter methods whose kind has an exact form of it)."""
        if self.method not in ADAPTER_METHODS:
            return False
        try:
            replace(self.adapter_config(), strength=0.5)
        except ValueError:
            return False
        return True


def per_task_settings(settings: dict[str, Any], tasks: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Every per-task setting in `settings` (a TrainConfig's, or overrides of it) resolved for `tasks`:
    {name: {task: value}}; ValueError names the first that does not fit."""
    fields = TrainConfig.__dataclass_fields__
    return {name: parse_per_task(name, settings.get(name, fields[name].default), tasks, fields[name].default)
            for name in PER_TASK}


def train(cfg: Optional[TrainConfig], out: str | Path, *, options: Optional[RunOptions] = None,
          overwrite: bool = False, resume: bool = False, changes: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Run (or with resume=True continue) a continual run in folder `out`; returns the summary.
    changes: on resume, settings to change (only "iter": iterations per task)."""
    if cfg is not None and not resume:
        _check_inputs(cfg)
    if options is not None and options.inception is not None:
        near.require_network_file(options.inception)  # before the run folder is made
    return start_run("train", TrainConfig, cfg, out, lambda *a: Continual(*a).run(), options=options,
                     overwrite=overwrite, resume=resume, changes=changes,
                     inputs=lambda c: [resolve_checkpoint(c.ckpt), c.lpips, *(d for _, d in c.tasks)])


def trainable_d_params(D: Discriminator, d_freeze: int) -> list[Tensor]:
    """D's tensors that train when its first `d_freeze` layers (D.convs, from the image) keep the base's
    weights (FreezeD, Mo et al. 2020); the frozen ones get requires_grad False."""
    if d_freeze > len(D.convs):
        raise ValueError(f"d_freeze {d_freeze} exceeds the discriminator's {len(D.convs)} layers before the final "
                         f"conv (from-RGB + one block per resolution)")
    frozen = {id(p) for p in D.convs[:d_freeze].parameters()}
    for p in D.convs[:d_freeze].parameters():
        p.requires_grad_(False)
    return [p for p in D.parameters() if id(p) not in frozen]


def _check_inputs(cfg: TrainConfig) -> None:
    """Fail before any training: base checkpoint readable with a discriminator, every data folder
    non-empty, no task name already in the base's bank."""
    bcfg = read_checkpoint_config(cfg.ckpt)
    if bcfg.get("discriminator") is None:
        raise ValueError(f"the base checkpoint {cfg.ckpt} has no discriminator; `colorgan train` initialises each "
                         f"task's D from it (pretrain with `colorgan pretrain`, or convert with the 'd' weights)")
    n_layers = Discriminator.n_layers(int(bcfg["discriminator"]["size"]))
    if cfg.d_freeze > n_layers:
        raise ValueError(f"d_freeze {cfg.d_freeze} exceeds the base discriminator's {n_layers} layers before the "
                         f"final conv (from-RGB + one block per resolution) in {cfg.ckpt}")
    existing = {e["name"] for e in bcfg["tasks"]}
    for name, folder in cfg.tasks:
        if name in existing:
            raise ValueError(f"task {name!r} is already in the base checkpoint's bank ({sorted(existing)}); "
                             f"choose another name")
        list_images(folder)
    if cfg.lpips is not None and not Path(cfg.lpips).is_file():
        raise FileNotFoundError(f"LPIPS weights file {cfg.lpips}: no such file")


@dataclass
class TaskContext:
    """Everything one task's training holds: models, optimizers, data stream, anchors."""

    t: int
    name: str
    G: Generator                 # the trained generator (the base with this task's adapters, or a full copy)
    g_ema: Generator
    g_params: list               # the trained tensors
    ema_params: list             # their EMA counterparts in g_ema
    D: Discriminator
    g_optim: torch.optim.Optimizer
    d_optim: torch.optim.Optimizer
    augment: Optional[DiffAugment]
    stream: BatchStream
    steps: GANSteps
    anchors: Tensor
    n_heads: int                 # patch heads drawn from
    source: Optional[list]       # ewc: the source weights
    previous: Generator          # the generator before this task (distill's teacher)
    n_images: int


class Continual:
    """State and loop of one continual run."""

    def __init__(self, cfg: TrainConfig, run: RunFolder, info: DistInfo, options: RunOptions, resume: bool) -> None:
        self.cfg, self.folder, self.info, self.options, self.resume = cfg, run, info, options, resume
        self.device = info.device
        self.amp = resolve_amp(options.amp, self.device)
        self.adapters = cfg.method in ADAPTER_METHODS
        base, base_d, binfo = load_checkpoint(cfg.ckpt, self.device)
        base = base.to(memory_format=options.memory_format())
        if base_d is None:
            raise ValueError(f"the base checkpoint {cfg.ckpt} has no discriminator")
        self.base_tasks = list(binfo["tasks"])
        self.base_G = base                      # frozen source generator (its EMA)
        self.base_D_state = {k: v.clone() for k, v in base_d.state_dict().items()}
        self.d_config = {**base_d.config(), "patch_heads": True}
        for p in self.base_G.parameters():
            p.requires_grad_(False)
        # "latent": per-rank draws (latents, noise, mixing); "shared": choices every rank must agree on
        self.gens = {"latent": torch.Generator().manual_seed(cfg.seed * 7919 + 11 + info.rank),
                     "shared": torch.Generator().manual_seed(cfg.seed * 7919 + 13)}
        self.sample_z = make_z(cfg.n_sample, base.style_dim, torch.Generator().manual_seed(cfg.seed + 12345),
                               self.device)
        self.fisher: Optional[list[Tensor]] = None
        self.distance = bl.pixel_distance
        if cfg.method == "lfs" and cfg.lpips:
            self.distance = bl.lpips_distance(load_lpips(cfg.lpips, self.device).eval())
        if self.adapters:
            self.G = base                       # adapters are added to the base generator itself
            fastlora.freeze_base(self.G)
            self.g_ema = copy.deepcopy(base)
        self.task_seconds: dict[str, float] = {}
        self.near_gaps: Optional[dict[str, Optional[float]]] = None  # set by run(): see _near_gaps
        self.strengths: dict[str, float] = {}  # each finished task's strength (--strength)
        self.shot_kids: dict[str, dict[float, float]] = {}  # --strength auto: what each pick measured
        self._net: Any = None  # the Inception network once looked for (False: none installed)

    # ------------------------------------------------------------------ set-up per task
    @contextlib.contextmanager
    def _task_rng(self, t: int):
        """A forked global RNG seeded by (seed, task): fresh adapters/heads are the same in every run,
        and building them leaves the global RNG untouched."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.seed * 1_000_003 + 17 * (t + 1))
            yield

    def _add_adapters(self, t: int, name: str) -> None:
        if name not in fastlora.task_names(self.G):
            with self._task_rng(t):
                acfg = self.cfg.adapter_config()
                fastlora.add_task(self.G, name, acfg)
                fastlora.add_task(self.g_ema, name, acfg)
            copy_tensors(fastlora.task_parameters(self.g_ema, name), fastlora.task_parameters(self.G, name))
        for p in fastlora.task_parameters(self.g_ema, name):
            p.requires_grad_(False)
        for task in fastlora.task_names(self.G):
            for p in fastlora.task_parameters(self.G, task):
                p.requires_grad_(task == name)

    def _fresh_d(self, t: int) -> Discriminator:
        with self._task_rng(t):
            D = Discriminator.from_config(self.d_config)
        missing, unexpected = D.load_state_dict(self.base_D_state, strict=False)
        bad = [k for k in missing if not k.startswith("extra.")]
        if bad or unexpected:
            raise ValueError(f"the base discriminator does not fit: missing {bad[:5]}, unexpected {unexpected[:5]}")
        return D.to(self.device, memory_format=self.options.memory_format())

    def _full_generators(self, previous: Generator) -> tuple[Generator, Generator]:
        G = copy.deepcopy(previous)
        for p in G.parameters():
            p.requires_grad_(True)
        g_ema = copy.deepcopy(previous)
        for p in g_ema.parameters():
            p.requires_grad_(False)
        return G, g_ema

    # ------------------------------------------------------------------ main loop
    def run(self) -> dict[str, Any]:
        cfg, run, info = self.cfg, self.folder, self.info
        n_tasks, iters = len(cfg.tasks), cfg.iter
        if not self.resume:
            run.write_config({**asdict(cfg), "world_size": info.world_size, "base_tasks": self.base_tasks})
            run.info(f"train --method {cfg.method} on {n_tasks} task(s) from {cfg.ckpt}; device={self.device}; "
                     f"world={info.world_size}")
        start_task, start_step, state = 0, 0, None
        if self.resume:
            state = st.load_state(run.state_file)
            if state.get("kind") != "train":
                raise ValueError(f"{run.state_file} is not a continual-training state")
            if state["world_size"] != info.world_size:
                raise ValueError(f"the run was saved with {state['world_size']} process(es); resume it with the "
                                 f"same number (got {info.world_size})")
            start_task, start_step = int(state["task_index"]), int(state["step"])
            self.task_seconds = dict(state.get("task_seconds", {}))
            run.info(f"resumed at task {start_task} step {start_step}")
        self.near_gaps = self._near_gaps(state)
        if cfg.method == "ewc":
            self.fisher = state["fisher"] if state is not None else None
            if self.fisher is None:
                self.fisher = self._compute_fisher()
            self.fisher = [f.to(self.device) for f in self.fisher]
        previous = self.base_G
        if self.adapters and state is not None:
            for t in range(min(start_task + (1 if start_step > 0 else 0), n_tasks)):
                self._add_adapters(t, cfg.tasks[t][0])
            _load_adapter_state(self.G, state["adapters"])
            _load_adapter_state(self.g_ema, state["adapters_ema"])
            self.strengths, self.shot_kids = dict(state.get("strengths", {})), dict(state.get("shot_kids", {}))
            for name, s in self.strengths.items():
                for model in (self.G, self.g_ema):
                    fastlora.set_strength(model, name, s)
        elif state is not None and state.get("previous") is not None:
            previous = copy.deepcopy(self.base_G)
            previous.load_state_dict(state["previous"])
        total = n_tasks * iters
        bar = progress(total, start_task * iters + start_step, f"train[{cfg.method}]",
                       self.options.progress and info.is_main)
        stopped = False
        try:
            for t in range(start_task, n_tasks):
                resumed = state if (state is not None and t == start_task) else None
                stopped, previous = self._task(t, start_step if resumed else 0, resumed, previous, bar)
                if stopped:
                    break
        finally:
            bar.close()
        return self._finish(stopped)

    def _near_gaps(self, state: Optional[dict]) -> Optional[dict[str, Optional[float]]]:
        """Each task's gap from the base (colorgan.train.near), measured once at the start of the run and kept in
        its state; None when the check is off (--near-anchor 0, another method) or no Inception network is
        installed."""
        cfg = self.cfg
        if cfg.method != "color" or cfg.near_anchor == 0:
            return None
        if state is not None and "near_gaps" in state:
            return state["near_gaps"]
        gaps = self._measure_gaps() if self.info.is_main else None
        return gather_objects(gaps, self.info)[0]  # every rank trains with the main rank's verdicts

    def _network(self) -> Optional[near.FeatureNetwork]:
        """The Inception network (--inception, else the installed one), looked for once; None when there is none."""
        if self._net is None:
            self._net = near.find_network(self.device, self.options.inception) or False
        return self._net or None

    def _measure_gaps(self) -> Optional[dict[str, Optional[float]]]:
        cfg, run = self.cfg, self.folder
        net = self._network()
        if net is None:
            run.info("near check skipped: no Inception network installed (pip install 'colorgan[eval]', or set "
                     "$COLORGAN_INCEPTION); every task trains with --style-anchor and --mapping-anchor as given")
            return None
        base = near.base_features(self.base_G, net, fastlora.base_checksum(self.base_G), progress=self.options.progress)
        gaps = {name: near.shot_gap(folder, base, net, self.base_G.size) for name, folder in cfg.tasks}
        for name, gap in gaps.items():
            if gap is None:
                run.info(f"near check: task {name!r} has one image, too few to measure (at least 2): not near")
                continue
            verdict = f"near: anchors at least {cfg.near_anchor:g}" if near.is_near(gap) else "not near"
            run.info(f"near check: task {name!r} gap {gap:.1f} (KID x 10^3 against the base; near below "
                     f"{near.NEAR_GAP:g}): {verdict}")
        return gaps

    def anchor_weight(self, role: str, name: str) -> float:
        """Task `name`'s anchor weight for adapter role `role` ("style", "mapping"): --style-anchor /
        --mapping-anchor, raised to --near-anchor when the task's shots lie near the base."""
        weight = self.cfg.per_task(f"{role}_anchor")[name]
        if self.near_gaps is not None and near.is_near(self.near_gaps.get(name)):
            weight = max(weight, self.cfg.near_anchor)
        return weight

    def _task_models(self, t: int, name: str, previous: Generator) -> tuple[Generator, Generator, list[Tensor]]:
        """(trained G, its EMA, the trained tensors): the task's fresh adapters on the frozen base, or a full
        copy of the previous generator for the fine-tuning baselines."""
        if self.adapters:
            self._add_adapters(t, name)
            fastlora.set_task(self.G, name)
            fastlora.set_task(self.g_ema, name)
            for p in self._fixed_adapters(self.G, name):
                p.requires_grad_(False)
            return self.G, self.g_ema, self._trained_adapters(self.G, name)
        G, g_ema = self._full_generators(previous)
        return G, g_ema, list(G.parameters())

    def _fixed_adapters(self, G: Generator, name: str) -> list[Tensor]:
        """The task's adapter tensors that stay at their initial values, the identity: the conv adapters in
        synthesis layers finer than --conv-max-res (none when it is 0) and the mapping or style adapters whose
        learning-rate multiplier is 0."""
        limit = self.cfg.conv_max_res
        fine = [p for layer, res in G.synthesis_resolutions() if limit and res > limit
                for _, m in fastlora.adapted_layers(layer) if m.role == "conv" for p in m.adapters[name].parameters()]
        still = tuple(role for role, mul in self._lr_muls(name).items() if mul == 0)
        return fine + (list(fastlora.task_parameters(G, name, roles=still)) if still else [])

    def _lr_muls(self, name: str) -> dict[str, float]:
        """Task `name`'s learning-rate multiplier per adapter role (--mapping-lr-mul, --style-lr-mul)."""
        return {role: self.cfg.per_task(f"{role}_lr_mul")[name] for role in ("mapping", "style")}

    def _trained_adapters(self, G: Generator, name: str) -> list[Tensor]:
        """The task's adapter tensors that train (and their EMA copies, in the same order)."""
        fixed = {id(p) for p in self._fixed_adapters(G, name)}
        return [p for p in fastlora.task_parameters(G, name) if id(p) not in fixed]

    def _g_groups(self, name: str, g_params: list[Tensor], g_lr: float) -> list[dict]:
        """The G optimizer's parameter groups: the mapping and style adapters apart when their learning-rate
        multiplier (--mapping-lr-mul, --style-lr-mul) is not 1 (at 0 they do not train: not in g_params)."""
        muls = {role: mul for role, mul in self._lr_muls(name).items() if mul not in (0, 1)} if self.adapters else {}
        groups, apart = [], set()
        for role, mul in muls.items():
            ids = {id(p) for p in fastlora.task_parameters(self.G, name, roles=(role,))}
            groups.append({"params": [p for p in g_params if id(p) in ids], "lr": g_lr * mul})
            apart |= ids
        return [{"params": [p for p in g_params if id(p) not in apart]}, *groups]

    def _task_context(self, t: int, previous: Generator) -> "TaskContext":
        cfg, info = self.cfg, self.info
        name, folder = cfg.tasks[t]
        G, g_ema, g_params = self._task_models(t, name, previous)
        ema_params = self._trained_adapters(g_ema, name) if self.adapters else list(g_ema.parameters())
        D = self._fresh_d(t)
        dataset = ImageFolder(folder, G.size)
        g_lr, g_betas = lazy_adam_params(cfg.lr, cfg.g_reg_every)
        d_lr, d_betas = lazy_adam_params(cfg.lr, cfg.d_reg_every)
        g_optim = torch.optim.Adam(self._g_groups(name, g_params, g_lr), lr=g_lr, betas=g_betas)
        d_params = trainable_d_params(D, cfg.d_freeze)
        d_optim = torch.optim.Adam(d_params, lr=d_lr, betas=d_betas)
        augment = DiffAugment(cfg.augment_policy, seed=cfg.seed * 7919 + 100 * (t + 1) + info.rank) \
            if cfg.augment else None
        stream = BatchStream(dataset, cfg.batch, cfg.seed + 7 * (t + 1), info)
        steps = GANSteps(G, D, g_params, d_params, g_optim, d_optim, cfg, self.gens["latent"],
                         self.device, info, augment, self.amp, cfg.backend)
        anchors = make_z(cfg.n_anchors, G.style_dim, torch.Generator().manual_seed(cfg.seed * 31 + t + 1),
                         self.device)
        source = [p.detach().clone() for p in self.base_G.parameters()] if cfg.method == "ewc" else None
        return TaskContext(t=t, name=name, G=G, g_ema=g_ema, g_params=g_params, ema_params=ema_params, D=D,
                           g_optim=g_optim, d_optim=d_optim, augment=augment, stream=stream, steps=steps,
                           anchors=anchors, n_heads=min(cfg.highp, D.num_patch_heads), source=source,
                           previous=previous, n_images=len(dataset))

    def _extra_losses(self, ctx: "TaskContext", real: Tensor) -> ExtraLoss:
        """The method's extra generator losses for this iteration's real batch `real`."""
        cfg = self.cfg

        def extra(fake: Tensor, zs, kw) -> dict[str, Tensor]:
            out: dict[str, Tensor] = {}
            if cfg.method == "lfs" and cfg.ms_weight > 0:
                ms = bl.generator_mode_seeking(ctx.G, real, cfg.ms_batch_mult * cfg.batch, self.gens["latent"],
                                               self.distance, cfg.backend)
                if ms is not None:
                    out["mode_seeking"] = cfg.ms_weight * ms
            if cfg.method == "ewc":
                out["ewc"] = bl.ewc_penalty(ctx.g_params, ctx.source, self.fisher, cfg.ewc_lambda)
            if cfg.method == "distill":
                out["distill"] = cfg.distill_weight * bl.distill_loss(fake, ctx.previous, zs, kw, cfg.backend)
            if cfg.correspondence > 0 and self.adapters:
                out["correspondence"] = cfg.correspondence * self._correspondence(ctx)
            for role in ("style", "mapping"):
                weight = self.anchor_weight(role, ctx.name)
                if weight > 0 and self.adapters:
                    out[f"{role}_anchor"] = weight * fastlora.relative_shift(ctx.G, ctx.name, (role,))
            return out

        return extra

    def _correspondence(self, ctx: "TaskContext") -> Tensor:
        """The correspondence loss of this task's adapters on a fresh batch of latents and noise."""
        G, gen = ctx.G, self.gens["latent"]
        z = make_z(self.cfg.batch, G.style_dim, gen, self.device)
        return bl.adapter_correspondence(G, ctx.name, z, G.make_noise(self.cfg.batch, generator=gen), self.cfg.backend)

    def _iteration(self, ctx: "TaskContext", step: int) -> dict[str, float]:
        """One iteration of the recipe: anchors with the image-level D every `subspace_freq`-th step, else free
        latents with a patch head; D step, lazy R1, G step (with the method's extra losses), lazy path length."""
        cfg, steps = self.cfg, ctx.steps
        real = ctx.stream.next_batch(self.device).contiguous(memory_format=self.options.memory_format())
        which = step % cfg.subspace_freq
        patch = int(torch.randint(0, ctx.n_heads, (), generator=self.gens["shared"])) if which > 0 else None
        anch = ctx.anchors if which == 0 else None
        now = steps.d_step(real, steps.sample_latents(cfg.batch, anch, cfg.subspace_std), patch)
        if every(step, cfg.d_reg_every):
            now.update(steps.r1_step(real, patch))
        now.update(steps.g_step(steps.sample_latents(cfg.batch, anch, cfg.subspace_std), patch,
                                self._extra_losses(ctx, real)))
        if every(step, cfg.g_reg_every) and cfg.path_regularize > 0:
            now.update(steps.pl_step(cfg.batch))
        ema_update(ctx.ema_params, ctx.g_params, warmup_decay(step, cfg.ema_decay) if cfg.ema_warmup
                   else cfg.ema_decay)
        return now

    def _task(self, t: int, start: int, state: Optional[dict], previous: Generator, bar) -> tuple[bool, Generator]:
        """Train task t from step `start` (restoring `state` when resuming); returns (stopped, previous)."""
        cfg = self.cfg
        ctx = self._task_context(t, previous)
        if state is not None:
            self._restore(state, ctx)
        if start == 0:
            what = "trainable adapter parameters" if self.adapters else "generator parameters, full fine-tuning"
            self.folder.info(f"task {t + 1}/{len(cfg.tasks)} {ctx.name!r}: {ctx.n_images} images, "
                             f"{sum(p.numel() for p in ctx.g_params)} {what}")
        timer, spent, losses, step = Timer(), self.task_seconds.get(ctx.name, 0.0), {}, start
        try:
            while step < cfg.iter:
                if self.options.stop_at is not None and t * cfg.iter + step >= self.options.stop_at:
                    self.task_seconds[ctx.name] = spent + timer.elapsed()
                    if not (step == 0 and self.folder.state_file.exists()):  # at a task start the last state stands
                        self._snapshot(ctx, step, False)
                    return True, previous
                now = self._iteration(ctx, step)
                losses.update(now)
                step += 1
                bar.update(1)
                bar.set_postfix_str(f"{ctx.name} " + format_losses(losses), refresh=False)
                if step == cfg.iter and self.adapters and cfg.per_task("mapping_adapters")[ctx.name] == "drop":
                    self._drop_mapping_adapters(ctx)
                if every(step, cfg.log_every) or step == cfg.iter:
                    self.folder.log({"task": ctx.name, "task_index": t, "step": step,
                                     "global_step": t * cfg.iter + step, **now, "time": spent + timer.elapsed()})
                if every(step, cfg.sample_every) or step == cfg.iter:
                    self._samples(ctx.g_ema, f"{ctx.name}_{step:07d}.png")
                if every(step, cfg.save_every) and step < cfg.iter:
                    self.task_seconds[ctx.name] = spent + timer.elapsed()
                    self._snapshot(ctx, step, False)
            self.task_seconds[ctx.name] = spent + timer.elapsed()  # training alone: the strength pick is apart
            if self.adapters:
                self._choose_strength(ctx)
            previous = self._end_task(ctx)
            self._snapshot(ctx, cfg.iter, True)
        except (NonFiniteLoss, NonFiniteInput) as exc:
            raise diverged(self.folder, f"task {ctx.name!r} iteration {step + 1}", exc, cfg.lr) from None
        self.folder.info(f"task {ctx.name!r} done in {self.task_seconds[ctx.name]:.1f}s")
        return False, previous

    def _drop_mapping_adapters(self, ctx: "TaskContext") -> None:
        """--mapping-adapters drop: the task's mapping adapters (trained and EMA) back to the identity."""
        for model in (ctx.G, ctx.g_ema):
            with self._task_rng(ctx.t):
                fastlora.reset_task(model, ctx.name, roles=("mapping",))

    def _choose_strength(self, ctx: "TaskContext") -> None:
        """--strength: set the finished task's strength in both generators (auto: picked on the main rank)."""
        name, run = ctx.name, self.folder
        wanted = self.cfg.per_task("strength")[name]
        if wanted != strength.AUTO:
            s = float(wanted)
        else:
            kids = gather_objects(self._pick_kids(ctx) if self.info.is_main else None, self.info)[0]
            s = strength.pick(kids) if kids else 1.0
            if kids:
                self.shot_kids[name] = kids
                listed = ", ".join(f"{k:g}: {1e3 * v:.1f}" for k, v in kids.items())
                run.info(f"strength: task {name!r} KID x 10^3 against its shots at strength {listed}: keeps {s:g}")
        for model in (self.G, self.g_ema):
            fastlora.set_strength(model, name, s)
        self.strengths[name] = s
        if wanted != strength.AUTO and s != 1:
            run.info(f"strength: task {name!r} keeps {s:g} of its effect (--strength)")

    def _pick_kids(self, ctx: "TaskContext") -> Optional[dict[float, float]]:
        """--strength auto: the task's KID against its shots at each candidate strength (colorgan.train.strength);
        None, and the log says why, when it cannot be measured (the task then keeps strength 1)."""
        run, name = self.folder, ctx.name
        if not self.cfg.exact_strength():
            run.info(f"strength: task {name!r} keeps 1: kind {self.cfg.kind!r} has no strength below 1 (LeFT "
                     f"convolutions)")
            return None
        net = self._network()
        if net is None:
            run.info(f"strength pick skipped for task {name!r}: no Inception network installed (pip install "
                     f"'colorgan[eval]', or set $COLORGAN_INCEPTION); it keeps strength 1")
            return None
        shots = near.shot_features(self.cfg.tasks[ctx.t][1], net, self.base_G.size)
        if shots.shape[0] < 2:
            run.info(f"strength: task {name!r} has one image, too few to measure (at least 2); it keeps strength 1")
            return None
        base = near.base_features(self.base_G, net, fastlora.base_checksum(self.base_G), n=strength.PICK_SAMPLES,
                                  progress=self.options.progress)
        return strength.shot_kids(self.g_ema, name, shots, net, base, progress=self.options.progress)

    def _end_task(self, ctx: "TaskContext") -> Generator:
        """Close a finished task (the grid after it); returns the generator the next task starts from."""
        if self.adapters:
            fastlora.set_task(self.G, None)
            fastlora.set_task(self.g_ema, None)
            previous = ctx.previous
        else:
            ctx.g_ema.update_w_avg()
            previous = ctx.g_ema
        self._after_task_grid(ctx.t, ctx.g_ema)
        return previous

    # ------------------------------------------------------------------ pieces
    def _compute_fisher(self) -> list[Tensor]:
        cfg = self.cfg
        D = self._fresh_d(-1)
        g = torch.Generator().manual_seed(cfg.seed * 7919 + 5)
        self.folder.info(f"EWC: Fisher information of the base from {cfg.fisher_batches} batches of {cfg.batch}")
        return bl.compute_fisher(self.base_G, D, cfg.fisher_batches, cfg.batch, g, cfg.backend)

    @torch.no_grad()
    def _samples(self, g_ema: Generator, name: str) -> None:
        if self.info.is_main:
            self.folder.save_grid(g_ema(self.sample_z, noise_mode="const", backend=self.cfg.backend), name)

    @torch.no_grad()
    def _after_task_grid(self, t: int, g_ema: Generator) -> None:
        """After task t: one row per model (base, then every task so far) on the same latents."""
        if not self.info.is_main:
            return
        z = self.sample_z[:8]
        rows = [self.base_G(z, noise_mode="const", backend=self.cfg.backend)] if not self.adapters else []
        if self.adapters:
            fastlora.set_task(self.g_ema, None)
            rows.append(self.g_ema(z, noise_mode="const", backend=self.cfg.backend))
            for name, _ in self.cfg.tasks[:t + 1]:
                fastlora.set_task(self.g_ema, name)
                rows.append(self.g_ema(z, noise_mode="const", backend=self.cfg.backend))
            fastlora.set_task(self.g_ema, None)
        else:
            rows.append(g_ema(z, noise_mode="const", backend=self.cfg.backend))
        self.folder.save_grid(torch.cat(rows), f"after_{self.cfg.tasks[t][0]}.png", nrow=z.shape[0])

    def _snapshot(self, ctx: "TaskContext", step: int, task_done: bool) -> None:
        """Write the checkpoint(s) and RUN/state/state.pt. After a finished task the state points at
        the next task's start."""
        cfg, info = self.cfg, self.info
        t, G, g_ema, D, previous = ctx.t, ctx.G, ctx.g_ema, ctx.D, ctx.previous
        g_optim, d_optim, augment, stream, steps = ctx.g_optim, ctx.d_optim, ctx.augment, ctx.stream, ctx.steps
        ensure_finite({"G": G, "g_ema": g_ema, "D": D})
        rng = gather_objects({"global": st.global_rng_state(), "gens": st.generator_states(self.gens),
                              "augment": augment.state_dict() if augment is not None else None,
                              "data": stream.state_dict()}, info)
        if info.is_main:
            source = {"kind": "train", "method": cfg.method, "base": str(cfg.ckpt)}
            name = cfg.tasks[t][0]
            if self.adapters:
                done = [n for n, _ in cfg.tasks[:t + (1 if task_done or step > 0 else 0)]]
                save_checkpoint(self.folder.path / CHECKPOINT_DIR, self.g_ema, self._base_d(), overwrite=True,
                                tasks=self.base_tasks + done, source={**source, "partial": not task_done})
            else:
                save_checkpoint(self.folder.path / PER_TASK_DIR / name, g_ema, self._base_d(), overwrite=True,
                                source={**source, "task": name, "partial": not task_done})
            state: dict[str, Any] = {"kind": "train", "world_size": info.world_size, "ranks": rng,
                                     "task_seconds": self.task_seconds, "near_gaps": self.near_gaps,
                                     "strengths": self.strengths, "shot_kids": self.shot_kids}
            if task_done or step == 0:  # a task boundary: the next (or this) task starts fresh
                index = t + 1 if task_done else t
                state.update(task_index=index, step=0)
                kept = self.base_tasks + [n for n, _ in cfg.tasks[:index]]
            else:
                state.update(task_index=t, step=step, d=D.state_dict(), g_optim=g_optim.state_dict(),
                             d_optim=d_optim.state_dict(), mean_path_length=steps.mean_path_length.detach().cpu())
                kept = self.base_tasks + [n for n, _ in cfg.tasks[:t + 1]]
                if not self.adapters:
                    state["g"] = G.state_dict()
                    state["g_ema"] = g_ema.state_dict()
            if self.adapters:
                state["adapters"] = _adapter_state(self.G, kept)
                state["adapters_ema"] = _adapter_state(self.g_ema, kept)
            else:
                prev = g_ema if task_done else previous
                if prev is not self.base_G:
                    state["previous"] = prev.state_dict()
            if cfg.method == "ewc":
                state["fisher"] = [f.detach().cpu() for f in self.fisher]
            st.save_state(self.folder.state_file, state)
        barrier(info)

    def _base_d(self) -> Discriminator:
        with torch.random.fork_rng(devices=[]):
            D = Discriminator.from_config({**self.d_config, "patch_heads": False})
        D.load_state_dict({k: v for k, v in self.base_D_state.items() if not k.startswith("extra.")})
        return D

    def _restore(self, state: dict, ctx: "TaskContext") -> None:
        G, g_ema, D, augment, stream, steps = ctx.G, ctx.g_ema, ctx.D, ctx.augment, ctx.stream, ctx.steps
        g_optim, d_optim = ctx.g_optim, ctx.d_optim
        mine = state["ranks"][self.info.rank]
        st.set_global_rng_state(mine["global"])
        st.set_generator_states(self.gens, mine["gens"])
        if int(state["step"]) == 0:
            return  # the state of a finished task: the next task starts fresh
        if not self.adapters:
            G.load_state_dict(state["g"])
            g_ema.load_state_dict(state["g_ema"])
        D.load_state_dict(state["d"])
        g_optim.load_state_dict(state["g_optim"])
        d_optim.load_state_dict(state["d_optim"])
        steps.mean_path_length = state["mean_path_length"].to(self.device)
        if augment is not None:
            augment.load_state_dict(mine["augment"])
        stream.load_state_dict(mine["data"])

    def _finish(self, stopped: bool) -> dict[str, Any]:
        cfg, run = self.cfg, self.folder
        summary: dict[str, Any] = {"kind": "train", "method": cfg.method, "finished": not stopped,
                                   "tasks": [n for n, _ in cfg.tasks], "seconds": self.task_seconds,
                                   "world_size": self.info.world_size}
        if cfg.method == "color" and cfg.near_anchor > 0:
            summary["near"] = {"checked": self.near_gaps is not None, "threshold": near.NEAR_GAP,
                               "anchor": cfg.near_anchor, "gaps": self.near_gaps or {},
                               "near_tasks": [n for n, g in (self.near_gaps or {}).items() if near.is_near(g)]}
        if self.adapters:
            summary["strength"] = {"setting": cfg.strength, "tasks": self.strengths,
                                   "shot_kid": {t: {f"{s:g}": 1e3 * v for s, v in k.items()}
                                                for t, k in self.shot_kids.items()}}
            summary["checkpoint"] = str(run.path / CHECKPOINT_DIR)
            report = parameter_report(self.g_ema)
            per_task = {k: v["stored"] for k, v in report["tasks"].items()}
            summary["storage"] = {"base_generator_params": report["generator"], "per_task_params": per_task,
                                  "per_task_fraction_of_base": {k: v / report["generator"]
                                                                for k, v in per_task.items()},
                                  "note": "one bank: the base once plus each task's adapters"}
        else:
            per_task = {}
            n_params = sum(p.numel() for p in self.base_G.parameters())
            for name, _ in cfg.tasks:
                folder = run.path / PER_TASK_DIR / name
                if folder.is_dir():
                    per_task[name] = {"checkpoint": str(folder), "generator_params": n_params,
                                      "bytes": sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())}
            summary["checkpoints"] = per_task
            summary["storage"] = {"base_generator_params": n_params,
                                  "per_task_params": {k: n_params for k in per_task},
                                  "total_params_stored": n_params * len(per_task),
                                  "note": "full fine-tuning keeps one whole generator per task"}
        if stopped:
            run.info(f"stopped (--stop-at {self.options.stop_at}); continue with --resume {run.path}")
        run.write_summary(summary)
        barrier(self.info)
        return summary


def _adapter_state(model, tasks: Sequence[str]) -> dict[str, Tensor]:
    """Adapter tensors of `tasks` (state-dict keys containing ".adapters.<task>.")."""
    marks = tuple(f".adapters.{t}." for t in tasks)
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if any(m in f".{k}" for m in marks)}


def _load_adapter_state(model, tensors: dict[str, Tensor]) -> None:
    expected = {k: v for k, v in model.state_dict().items() if ".adapters." in f".{k}"}
    if set(expected) != set(tensors):
        extra, missing = sorted(set(tensors) - set(expected)), sorted(set(expected) - set(tensors))
        raise ValueError(f"the saved adapters do not match the rebuilt bank (missing {missing[:3]}, "
                         f"unexpected {extra[:3]})")
    with torch.no_grad():
        for k, v in expected.items():
            v.copy_(tensors[k])
