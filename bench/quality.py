"""Few-shot quality benchmark: adapt a base to the emoji benchmark's tasks one after another with each adapter
configuration and several shot seeds, and score every task against its full set beside the floors that say what
a score can mean.

    python -m bench quality --real DATA [--tasks test|validation|NAME,...] [--configs default,llora,published,left,...]
                            [--config NAME:key=value,...] [--seeds 0,1,2] [--iter 250] [--budgets 100,500]
                            [--rival-seeds 0,1,2] [--config-seeds NAME:SEEDS] [--n 300] [--ref-max 1000] [--base emoji32]
                            [--runs runs/quality] [--out DIR] [--overwrite]

DATA is a `colorgan data emoji --size 32` root. For every task, at a fixed n (fakes; the reference is the task's
full set, or with --ref-max a fixed seeded subset of it):
  floors   noise: the two halves of the reference against each other (what a perfect generator scores);
           source_gap: n source images against the reference; memorisation: the ten shots repeated to n;
           base: the unadapted base's samples.
  scores   per configuration: the adapted task's samples (seeds 0..n-1), mean and spread over the shot seeds;
           `default-noconv`: the default's tasks (first seed) sampled with their conv adapters switched off (what the conv
           LLoRA contributes).
Every configuration trains with `colorgan train --method color` on the demo's recipe (batch 4, R1 γ 0.1, conv
adapters up to 16 px) and differs only in its overrides (llora: CoLoR-GAN's LoRA on the linear layers; published
and left adapt every resolution); a run learns all tasks one after another, so forgetting is measured too (the
rows of RUN/samples/after_<task>.png after the last task against right after the task: max abs pixel difference).
`--budgets` also scores each run after fewer iterations (runs stop and resume there; validation uses this).
Finished runs in --runs are reused, so an interrupted benchmark resumes.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import math
import shlex
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch

from bench import common
from bench.quality_scores import Scorer, halves, inception_path, scores
from colorgan.checkpoint import read_checkpoint_config, resolve_checkpoint
from colorgan.data.emoji import choose_shots, read_manifest
from colorgan.data.folder import images_sha256, list_images
from colorgan.demo import demo_train_config
from colorgan.train.continual import TrainConfig, per_task_settings, train
from colorgan.train.loop import RUN_ID_KEY, RunOptions
from colorgan.train.per_task import PER_TASK
from fastlora.io import atomic_write_bytes, atomic_write_json, load_json

# named configurations: overrides of the demo's `colorgan train` settings (the rivals adapt every resolution, as
# published)
CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    "llora": {"kind": "llora"},  # CoLoR-GAN's form on every layer, otherwise the default recipe (the default before
                                 # validation round 16)
    # the rivals train as published, without this project's near check (near_anchor 0) or strength pick (1)
    "published": {"kind": "llora", "act": "both", "compat": "upstream", "alpha_linear": 4.0, "conv_max_res": 0,
                  "near_anchor": 0, "strength": 1},
    # the published configuration at rank 2: it stores at least as many parameters per task as the default (23,588
    # against 23,247 on emoji32), so beating it is beating the published method at no more stored parameters
    "published-r2": {"kind": "llora", "act": "both", "compat": "upstream", "alpha_linear": 4.0, "conv_max_res": 0,
                     "rank": 2, "near_anchor": 0, "strength": 1},
    "left": {"kind": "left", "conv_max_res": 0, "near_anchor": 0, "strength": 1},
    # the default of round 37 (before the strength pick) plus the correspondence loss
    "correspondence": {"correspondence": 1.0, "strength": 1},
}
# the bar's rival configurations, by the method they stand for (a method may appear at several budgets)
RIVALS: dict[str, str] = {"published": "published", "published-r2": "published", "left": "left"}
FIXED = ("ckpt", "tasks", "iter", "seed")  # set by the benchmark for every configuration
# the training settings each configuration resolves to, recorded in the results (defaults change over time)
SETTINGS = ("method", "kind", "rank", "alpha_conv", "alpha_linear", "act", "compat", "lr", "batch", "ema_decay",
            "ema_warmup", "correspondence", "augment", "d_freeze", "mapping_lr_mul", "style_lr_mul", "style_anchor",
            "mapping_anchor", "near_anchor", "mapping_adapters", "strength", "conv_max_res", "r1")
TASK_ORDER = ("openmoji-black", "flags", "symbols", "smileys", "twemoji", "openmoji")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench quality", description=__doc__.split("\n\n")[0])
    p.add_argument("--real", required=True, help="data root of `colorgan data emoji --size 32`")
    p.add_argument("--base", default="emoji32", help="base checkpoint folder or shipped base (default emoji32)")
    p.add_argument("--tasks", default="test", help="'test' or 'validation' (the tasks of that role in the data's "
                                                   "manifest), or task names (default test)")
    p.add_argument("--configs", default="default,llora,published,left,correspondence",
                   help=f"named configurations, of {', '.join(CONFIGS)}")
    p.add_argument("--config", action="append", default=[], metavar="NAME:key=value,...",
                   help="an extra configuration: `colorgan train` settings by field name, e.g. "
                        "alin1:alpha_linear=1 (repeatable)")
    p.add_argument("--seeds", default="0,1,2", help="shot seeds (seed 0: DATA/<task>/train; default 0,1,2)")
    p.add_argument("--iter", type=int, default=250, help="iterations per task (default 250, the budget the "
                                                          "validation tasks chose)")
    p.add_argument("--budgets", default=None, help="also score after these iterations per task (e.g. 250,500)")
    p.add_argument("--n", type=int, default=300, help="fakes per score (default 300)")
    p.add_argument("--ref-max", type=int, default=1000,
                   help="reference: at most this many images of each task's full set, a fixed seeded subset "
                        "(default 1000; 0: the full set)")
    p.add_argument("--rival-seeds", default=None,
                   help="shot seeds for the configurations other than default (default: --seeds)")
    p.add_argument("--config-seeds", action="append", default=[], metavar="NAME:SEEDS",
                   help="shot seeds for one configuration, e.g. correspondence:0 (repeatable; overrides --seeds "
                        "and --rival-seeds for it)")
    p.add_argument("--no-ablation", action="store_true", help="skip default-noconv (conv adapters off)")
    p.add_argument("--runs", default="runs/quality", help="folder of the training runs (reused when finished)")
    p.add_argument("--inception", default=None, help="Inception network file (default: found automatically)")
    p.add_argument("--out", default=None, help=f"results folder (default {common.RESULTS_DIR})")
    p.add_argument("--name", default="quality", help="results file name after the device and date")
    p.add_argument("--overwrite", action="store_true", help="replace today's results files")
    p.add_argument("--no-progress", action="store_true")
    return p


def parse_configs(names: Sequence[str], extra: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Named configurations plus `NAME:key=value,...` ones (values parsed as numbers where they are, true/false
    as booleans)."""
    fields = set(TrainConfig.__dataclass_fields__)
    out = {}
    for n in names:
        if n not in CONFIGS:
            raise SystemExit(f"--configs: unknown configuration {n!r}; choose from {', '.join(CONFIGS)}")
        out[n] = dict(CONFIGS[n])
    for spec in extra:
        name, _, body = spec.partition(":")
        overrides: dict[str, Any] = {}
        last = None
        for item in filter(None, body.split(",")):
            key, _, value = item.partition("=")
            if last in PER_TASK and key not in fields:  # a per-task form: mapping_adapters=flags=keep,b=drop
                overrides[last] = f"{overrides[last]},{item}"
                continue
            if key not in fields or key in FIXED:
                raise SystemExit(f"--config {spec!r}: {key!r} is not a `colorgan train` setting a configuration "
                                 f"may change ({', '.join(FIXED)} are the benchmark's own)")
            overrides[key], last = _value(value), key
        if not name or not overrides:
            raise SystemExit(f"--config must look like NAME:key=value,..., got {spec!r}")
        out[name] = overrides
    return out


def config_seeds(configs: Sequence[str], seeds: list[int], rival_seeds: list[int],
                 specs: Sequence[str]) -> dict[str, list[int]]:
    """Shot seeds per configuration: --seeds for default, --rival-seeds for the others, `NAME:SEEDS` overriding."""
    out = {c: seeds if c == "default" else rival_seeds for c in configs}
    for spec in specs:
        name, _, body = spec.partition(":")
        try:
            chosen = common.parse_list(body, int)
        except ValueError:
            chosen = None
        if name not in out or not chosen:
            raise SystemExit(f"--config-seeds must look like NAME:0,1,... for a configuration of this run "
                             f"({', '.join(out)}), got {spec!r}")
        out[name] = chosen
    return out


def _value(text: str) -> Any:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def select_tasks(manifest: dict, spec: str) -> list[str]:
    info = manifest["tasks"]
    if spec in ("test", "validation"):
        names = [t for t, i in info.items() if i.get("role", "test") == spec]
    else:
        names = [t.strip() for t in spec.split(",") if t.strip()]
    missing = [t for t in names if t not in info]
    if missing or not names:
        raise SystemExit(f"--tasks: {missing or spec!r} not in the data's manifest (tasks: {', '.join(info)})")
    return sorted(names, key=lambda t: (TASK_ORDER.index(t) if t in TASK_ORDER else len(TASK_ORDER), t))


def shot_folders(real: Path, runs: Path, tasks: Sequence[str], seed: int, shots: int) -> dict[str, Path]:
    """Each task's shots for `seed`: the data's own train split for seed 0, else drawn from the full set (copied
    under RUNS/shots, under the runs folder's lock: processes sharing it may draw the same seed at once)."""
    if seed == 0:
        return {t: real / t / "train" for t in tasks}
    out = {}
    with locked(runs / "shots.lock"):
        for t in tasks:
            folder = runs / "shots" / f"seed{seed}" / t
            ids = [p.stem for p in list_images(real / t / "full")]
            chosen = choose_shots(ids, shots, seed, t)
            if not folder.is_dir() or sorted(p.stem for p in folder.iterdir()) != chosen:
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir(parents=True)
                for i in chosen:
                    shutil.copyfile(real / t / "full" / f"{i}.png", folder / f"{i}.png")
            out[t] = folder
    return out


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on the file `path` (created if missing) for the block: one process at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def base_checksum(ckpt: Path) -> str:
    """The checksum of a checkpoint's base generator, as recorded in its config.json ("" if none was recorded)."""
    return str(read_checkpoint_config(ckpt)["base"].get("g_ema_checksum") or "")


def trained(cfg: TrainConfig, folder: Path, budgets: Sequence[int], progress: bool, on_budget,
            inception: Optional[str] = None) -> None:
    """Train the run in `folder`, stopping at every budget (single-task runs) to call on_budget(iterations), and
    at the end. A finished run is reused (its budgets' scores must then be cached); a stopped one continues.
    A run of another configuration, or one trained on another base (e.g. before a new base was shipped), is refused;
    a finished run made with the same base or the same shots under another path (a copy, the shipped name, a moved
    runs or data folder) is reused (base by checksum, shots by content). A stopped run continues from the paths it
    was started with, so they must be the ones given. The near check measures with the network file `inception`."""
    points = [*sorted(b for b in budgets if b < cfg.iter), cfg.iter]
    done = (folder / "summary.json").is_file() and read_summary(folder).get("finished")
    has_checkpoint = (folder / "checkpoint" / "config.json").is_file()
    if (folder / "config.json").is_file():
        # read as `colorgan train --resume` reads it: settings added since the run was saved take their defaults
        saved = _plain(asdict(TrainConfig.from_dict(load_json(folder / "config.json"))))
        wanted = _plain(asdict(cfg))
        if done and has_checkpoint:  # trains no more: base checked by checksum below, shots by content
            saved["ckpt"] = wanted["ckpt"]
            if same_shots(saved["tasks"], wanted["tasks"]):
                saved["tasks"] = wanted["tasks"]
        differ = sorted(k for k in wanted if saved.get(k) != wanted[k])
        if differ:
            raise SystemExit(f"{folder} holds a run with another configuration (differs in {', '.join(differ)}); "
                             f"remove it or choose --runs")
    if has_checkpoint:
        if base_checksum(folder / "checkpoint") != base_checksum(resolve_checkpoint(cfg.ckpt)):
            raise SystemExit(f"{folder} was trained on another base than {cfg.ckpt} (base checksum); remove it or "
                             f"choose --runs")
    for b in points:
        if not done:
            opts = RunOptions(progress=progress, stop_at=None if b == cfg.iter else b, inception=inception)
            if (folder / "state" / "state.pt").is_file():
                train(None, folder, options=opts, resume=True)
            else:
                train(cfg, folder, options=opts, overwrite=folder.exists())
        on_budget(b, done and b != cfg.iter)


def run_key(folder: Path) -> str:
    """What a run's cached scores are filed under: its folder name and the id written when it started, so that a
    run removed and trained again under the same name is scored again (runs from before ids: the name alone)."""
    run_id = load_json(folder / "config.json").get(RUN_ID_KEY)
    return f"{folder.name}#{run_id}" if run_id else folder.name


def same_shots(saved: list, wanted: list) -> bool:
    """Whether two runs' task lists ([name, folder] pairs) name the same tasks with the same images, wherever the
    folders are; a folder that is gone or unreadable counts as different."""
    if [n for n, _ in saved] != [n for n, _ in wanted]:
        return False
    try:
        return all(images_sha256(a) == images_sha256(b) for (_, a), (_, b) in zip(saved, wanted))
    except (OSError, ValueError):
        return False


def _plain(d: dict) -> dict:
    return json.loads(json.dumps(d, default=str))


def read_summary(folder: Path) -> dict:
    return load_json(folder / "summary.json")


class ScoreCache:
    """Scores already computed, by key, in one JSON file next to the runs (an interrupted benchmark resumes).
    Several benchmark processes may share it (e.g. one per configuration): every write merges under a lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, dict] = self._read()

    def _read(self) -> dict[str, dict]:
        return json.loads(self.path.read_text()) if self.path.is_file() else {}

    def get(self, key: str, compute) -> dict:
        if key not in self.data:
            value = compute()
            with locked(self.path.with_name(self.path.name + ".lock")):
                self.data = {**self._read(), **self.data, key: value}
                atomic_write_json(self.path, self.data)
        return self.data[key]


def forgetting(run: Path, tasks: Sequence[str]) -> dict[str, float]:
    """Max abs pixel difference of each task's rows between the grid right after it and the final grid."""
    from PIL import Image

    final = np.asarray(Image.open(run / "samples" / f"after_{tasks[-1]}.png"), dtype=np.int16)
    out = {}
    for t in tasks:
        early = np.asarray(Image.open(run / "samples" / f"after_{t}.png"), dtype=np.int16)
        out[t] = float(np.abs(final[: early.shape[0]] - early).max())
    return out


def floors(scorer: Scorer, real: Path, base: Path, tasks: Sequence[str], n: int, seeds: Sequence[int],
           shots: dict[int, dict[str, Path]], ref_max: Optional[int] = None,
           cache: Optional[ScoreCache] = None) -> dict[str, dict]:
    """Every task's floors and the base's score. With `cache`, each score is kept there under a key naming what it
    compares by content (image sets by SHA-256, the base by checksum, n, ref_max), so later invocations (another
    configuration, a split run) reuse it, and a rebuilt set or another base is scored again. Features are
    extracted only for scores not in the cache."""
    features: dict[object, Any] = {}  # features and digests, each made once

    def feats(key: object, make) -> Any:
        if key not in features:
            features[key] = make()
        return features[key]

    def source() -> np.ndarray:
        return feats(("source",), lambda: scorer.folder(real / "source", limit=n))

    def base_samples() -> np.ndarray:
        return feats(("base",), lambda: scorer.generated(base, None, n))

    def score(t: str, key: Optional[str], fake) -> dict:
        """`fake` (a function returning features) against t's reference; None: the reference's two halves."""
        def compute() -> dict:
            full = feats(("full", t), lambda: scorer.folder(real / t / "full", limit=ref_max))
            return scores(*halves(full)) if fake is None else scores(fake(), full)

        if cache is None or key is None:
            return compute()
        ref = feats(("sha256", t), lambda: images_sha256(real / t / "full")[:16])
        return cache.get(f"floor|{key}|{ref}|{ref_max}", compute)

    source_key = f"source_gap|{images_sha256(real / 'source')[:16]}|{n}"
    base_sum = base_checksum(base)[:16]
    base_key = f"base|{base_sum}|{n}" if base_sum else None  # a base without a checksum is always scored
    out = {}
    for t in tasks:
        memo = [score(t, f"memorisation|{images_sha256(shots[s][t])[:16]}|{n}",
                      lambda folder=shots[s][t]: scorer.images(folder, n)) for s in seeds]
        n_full = len(list_images(real / t / "full"))
        out[t] = {"noise": score(t, "noise", None), "source_gap": score(t, source_key, source),
                  "base": score(t, base_key, base_samples), "memorisation": _mean_scores(memo),
                  "n_full": n_full, "n_ref": min(ref_max or n_full, n_full)}
    return out


def _mean_scores(runs: Sequence[dict]) -> dict[str, float]:
    out = {k: float(np.mean([r[k] for r in runs])) for k in ("fid", "kid", "kid_std")}
    if len(runs) > 1:
        out.update(fid_spread=float(np.std([r["fid"] for r in runs])), kid_spread=float(np.std([r["kid"] for r in runs])))
    out["seeds"] = len(runs)
    return out


def run_bench(args: argparse.Namespace) -> dict:
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    stem = common.result_stem(args.out, dev, args.name)
    common.check_writable(stem, (".json", ".md"), args.overwrite)
    real, runs, base = Path(args.real), Path(args.runs), resolve_checkpoint(args.base)
    args.ref_max = args.ref_max or None  # 0: the full set
    read_checkpoint_config(base)
    manifest = read_manifest(real)
    tasks = select_tasks(manifest, args.tasks)
    seeds = common.parse_list(args.seeds, int) or [0]
    rival_seeds = common.parse_list(args.rival_seeds, int) or seeds
    budgets = common.parse_list(args.budgets, int) or []
    configs = parse_configs(common.parse_list(args.configs) or [], args.config)
    for name, c in configs.items():
        try:
            per_task_settings(c, tasks)
        except ValueError as exc:
            raise SystemExit(f"--config {name}: {exc}") from None
    inception = inception_path(args.inception)
    if budgets and len(tasks) > 1:
        raise SystemExit("--budgets needs one task per run: give one task with --tasks, or none")
    scorer = Scorer(inception, str(dev), progress=not args.no_progress)
    t0 = time.perf_counter()
    seeds_of = config_seeds(configs, seeds, rival_seeds, args.config_seeds)  # shot seeds per configuration
    shots = {s: shot_folders(real, runs, tasks, s, manifest["shots"])
             for s in dict.fromkeys([*seeds, *(x for v in seeds_of.values() for x in v)])}
    report: dict[str, Any] = {
        "environment": common.environment(dev), "base": str(base), "real": str(real), "n": args.n,
        "iter": args.iter, "budgets": budgets, "seeds": seeds, "rival_seeds": rival_seeds, "seeds_of": seeds_of,
        "ref_max": args.ref_max,
        "configs": configs, "data_manifest_version":
        manifest.get("manifest_version"), "command": "python -m bench quality " + shlex.join(args.argv),
    }
    cache = ScoreCache(runs / "scores.json")
    base_key = base_checksum(base)[:16]  # scores of runs on another base are never reused
    fl = floors(scorer, real, base, tasks, args.n, seeds, shots, args.ref_max, cache)
    per: dict[str, dict[str, list]] = {t: {} for t in tasks}
    params: dict[str, dict[str, int]] = {}
    forget: dict[str, dict[str, float]] = {}
    report["settings"] = settings = {}
    threads: dict[str, set] = {}  # the CPU thread counts each configuration's runs trained with
    train_s: dict[str, list] = {}  # each configuration's training seconds per task, over its runs
    for name, overrides in configs.items():
        for s in seeds_of[name]:
            folder = runs / f"{name}-seed{s}"
            cfg = demo_train_config(base, shots[s], args.iter, s, **overrides)
            settings[name] = {k: getattr(cfg, k) for k in SETTINGS}

            def score(b: int, cached_only: bool, folder=folder, name=name, s=s) -> None:
                key = name if b == args.iter else f"{name}@{b}"
                ck = folder / "checkpoint"
                gaps = (read_summary(folder).get("near") or {}).get("gaps") or {}  # the near check's, if it ran
                for t in tasks:
                    full = scorer.folder(real / t / "full", limit=args.ref_max)
                    jobs = [(key, ())] + ([("default-noconv", ("conv",))] if name == "default" and b == args.iter
                                          and s == seeds[0] and not args.no_ablation else [])
                    for label, off in jobs:
                        cache_key = f"{base_key}|{run_key(folder)}|{b}|{t}|{args.n}|{args.ref_max}|{label}"
                        if cached_only and cache_key not in cache.data:
                            raise SystemExit(f"{folder} is finished but its {b}-iteration scores were not kept; "
                                             f"remove the run to redo it")

                        def compute(ck=ck, t=t, off=off, full=full) -> dict:
                            return scores(scorer.generated(ck, t, args.n, off=off), full)

                        per[t].setdefault(label, []).append({**cache.get(cache_key, compute), "seed": s,
                                                             "near_gap": gaps.get(t)})

            trained(cfg, folder, budgets, not args.no_progress, score, inception)  # the near check: this network
            summary = read_summary(folder)
            threads.setdefault(name, set()).update(summary.get("torch_threads", []))
            secs = summary.get("seconds")  # read from a file: only finite numbers count
            train_s.setdefault(name, []).extend(
                float(v) for t, v in (secs.items() if isinstance(secs, dict) else ())
                if t in tasks and isinstance(v, (int, float)) and math.isfinite(v))
            entries = read_checkpoint_config(folder / "checkpoint")["tasks"]
            params[name] = {e["name"]: e["stored_params"] for e in entries}
            forget[f"{name}-seed{s}"] = forgetting(folder, tasks) if len(tasks) > 1 else {tasks[0]: 0.0}
    report["tasks"] = [{
        "task": t, "kind": manifest["tasks"][t]["kind"], "role": manifest["tasks"][t].get("role", "test"),
        "n": args.n, "n_full": fl[t]["n_full"], "n_ref": fl[t]["n_ref"],
        "floors": {k: fl[t][k] for k in ("noise", "source_gap", "memorisation")},
        "scores": {"base": {**fl[t]["base"], "params": 0},
                   **{k: {**_mean_scores(v), "per_seed": [{m: r[m] for m in ("seed", "fid", "kid", "near_gap")} for r in v],
                          "params": params.get(k.split("@")[0].replace("-noconv", ""), {}).get(t)}
                      for k, v in per[t].items()}},
        "forgetting_max_abs": max(f.get(t, 0.0) for f in forget.values()),
    } for t in tasks]
    for rec in report["tasks"]:
        rec["bar"] = verdict(rec)
        if rec["bar"] != "-":
            rec["bar_misses"] = bar_misses(rec)
    report["forgetting"] = forget
    # results move with the thread count (summation order): compare configurations trained with the same one
    report["train_threads"] = {name: sorted(v) for name, v in threads.items()}
    # as the runs recorded it when they trained (reused runs included); report["seconds"] is this invocation's
    report["train_seconds_per_task"] = {name: sum(v) / len(v) for name, v in train_s.items() if v}
    report["seconds"] = time.perf_counter() - t0
    report["grids"] = copy_grids(runs, {c: s[0] for c, s in seeds_of.items()}, tasks, stem)
    report["files"] = [str(p) for p in common.write_outputs(stem, report, markdown(report))] + report["grids"]
    return report


def copy_grids(runs: Path, first_seed: dict[str, int], tasks: Sequence[str], stem: Path) -> list[str]:
    """Each configuration's grid after the last task, from its first shot seed's run (rows: the base, then every
    task; same latents)."""
    out = []
    for name, seed in first_seed.items():
        grid = runs / f"{name}-seed{seed}" / "samples" / f"after_{tasks[-1]}.png"
        if grid.is_file():
            dst = stem.parent / f"{stem.name}-{name}.png"
            atomic_write_bytes(dst, grid.read_bytes())
            out.append(str(dst))
    return out


def bar_misses(task: dict, bar_k: float = 3.0) -> list[str]:
    """What keeps `default` from the bar on this task, one short phrase each (empty: the bar is met).

    Far-style and subset tasks: FID below the base's, KID below it by more than `bar_k` KID std (the larger of the
    two estimator stds), both below every rival configuration in the table, and for every rival method at least one
    of its configurations storing at least as many parameters as the default ("at no more stored parameters").
    Near-style tasks: KID not above the base's by more than 2 std. See docs/benchmarks.md."""
    s, base = task["scores"], task["scores"]["base"]
    d = s["default"]
    margin = (base["kid"] - d["kid"]) / max(d["kid_std"], base["kid_std"], 1e-12)  # in KID std, > 0: better
    if task["kind"] == "near-style":
        return [] if -margin <= 2 else [f"KID {-margin:.1f} std above the base (at most 2)"]
    misses = []
    if not d["fid"] < base["fid"]:
        misses.append(f"FID not below the base ({d['fid']:.1f} vs {base['fid']:.1f})")
    if not margin > bar_k:
        where = f"{margin:.1f} std below" if margin >= 0 else f"{-margin:.1f} std above"
        misses.append(f"KID {where} the base (more than {bar_k:g} below needed)")
    for name, r in ((n, s[n]) for n in RIVALS if n in s):
        for m in ("fid", "kid"):
            if not d[m] < r[m]:
                scale = 1e3 if m == "kid" else 1.0
                misses.append(f"{name} ahead on {m.upper()} ({scale * r[m]:.1f} vs {scale * d[m]:.1f})")
    for method in dict.fromkeys(RIVALS.values()):
        sizes = [s[n]["params"] for n, m in RIVALS.items() if m == method and n in s]
        if sizes and d.get("params") is not None and None not in sizes and max(sizes) < d["params"]:
            misses.append(f"every {method} configuration stores fewer parameters ({max(sizes):,} vs {d['params']:,})")
    return misses


def verdict(task: dict, bar_k: float = 3.0) -> str:
    """Whether `default` meets the bar on this task: "pass", "fail", or "-" without a default score."""
    if task["scores"].get("default") is None:
        return "-"
    return "fail" if bar_misses(task, bar_k) else "pass"


def paired_kid(task: dict, name: str, against: str) -> list[float]:
    """KID of `name` minus KID of `against` on each shot seed both ran (the same shots), in seed order; against
    the base (one score, no seeds) on each of `name`'s seeds."""
    s = task["scores"]
    mine = {r["seed"]: r["kid"] for r in s[name].get("per_seed", [])}
    if against == "base":
        return [k - s["base"]["kid"] for _, k in sorted(mine.items())]
    theirs = {r["seed"]: r["kid"] for r in s[against].get("per_seed", [])}
    return [mine[x] - theirs[x] for x in sorted(mine) if x in theirs]


def markdown(r: dict) -> str:
    """Per task: the floors, then FID / KID×10³ of the base and every configuration (mean over seeds ± spread)."""
    order = {c: i for i, c in enumerate(CONFIGS)}  # the named configurations first, in their order, then the rest
    names = sorted({k for t in r["tasks"] for k in t["scores"] if k != "base"},
                   key=lambda k: (order.get(k.split("@")[0], len(order)), k))

    def cell(x: Optional[dict]) -> str:
        if x is None:
            return "-"
        spread = f" ±{x['fid_spread']:.0f}/{1e3 * x['kid_spread']:.0f}" if "fid_spread" in x else ""
        return f"{x['fid']:.1f} / {1e3 * x['kid']:.1f}{spread}"

    ref = "full set" if not r.get("ref_max") else f"full set (at most {r['ref_max']} of it, a fixed subset)"
    own = r.get("seeds_of") or config_seeds(r["configs"], r["seeds"], r.get("rival_seeds", r["seeds"]), [])
    rivals = "".join(f", {c} {v}" for c, v in own.items() if v != r["seeds"])
    lines = [f"FID / KID×10³ against each task's {ref}, n = {r['n']} fakes, {r['iter']} iterations per task, "
             f"shot seeds {r['seeds']}{rivals} (mean ± spread over seeds); lower is better. Task (reference "
             f"images / full set). `{r['command']}`", "",
             "| task | kind | noise floor | source gap | memorisation | base | " + " | ".join(names) + " | bar |",
             "|" + "---|" * (7 + len(names))]
    for t in r["tasks"]:
        f = t["floors"]
        cells = [cell(t["scores"].get(k)) for k in names]
        lines.append(f"| {t['task']} ({t.get('n_ref', t['n_full'])}/{t['n_full']}) | {t['kind']} | {cell(f['noise'])} | {cell(f['source_gap'])} | "
                     f"{cell(f['memorisation'])} | {cell(t['scores']['base'])} | " + " | ".join(cells)
                     + f" | {t['bar']}{': ' + '; '.join(t['bar_misses']) if t.get('bar_misses') else ''} |")
    lines += ["", "| configuration | stored parameters per task | forgetting (max abs pixel difference) | trained with "
              "CPU threads | training seconds per task (mean) |", "|---|---|---|---|---|"]
    for name in r["configs"]:
        ps = {t["scores"].get(name, {}).get("params") for t in r["tasks"]} - {None}
        fg = max((v for k, f in r["forgetting"].items() if k.startswith(f"{name}-seed") for v in f.values()),
                 default=float("nan"))
        threads = ", ".join(map(str, r.get("train_threads", {}).get(name, []))) or "not recorded"
        secs = r.get("train_seconds_per_task", {}).get(name)
        secs = f"{secs:.0f}" if secs is not None else "not recorded"
        lines.append(f"| {name} | {', '.join(f'{p:,}' for p in sorted(ps))} | {fg:g} | {threads} | {secs} |")
    lines += paired_table(r)
    lines.append(f"\nThis invocation took {r['seconds'] / 60:.0f} min (finished runs in the runs folder and their "
                 f"cached scores are reused, not redone).")
    return "\n".join(lines) + "\n"


def paired_table(r: dict) -> list[str]:
    """Markdown lines: the default's KID minus the base's and each rival's on the same shot seeds (mean, then the
    seeds' range), which the means and spreads of the main table cannot show."""
    others = ["base", *(n for n in RIVALS if any(n in t["scores"] for t in r["tasks"]))]
    if not any(t["scores"].get("default", {}).get("per_seed") for t in r["tasks"]):
        return []  # results written before per-seed scores were kept
    lines = ["", "Paired on the same shots: default KID×10³ minus each column's, mean (lowest … highest over the "
             "seeds both ran; negative: the default is better)", "",
             "| task | " + " | ".join(others) + " |", "|" + "---|" * (1 + len(others))]
    for t in r["tasks"]:
        cells = []
        for o in others:
            diffs = paired_kid(t, "default", o) if "default" in t["scores"] and o in t["scores"] else []
            cells.append(f"{1e3 * np.mean(diffs):+.1f} ({1e3 * min(diffs):+.1f} … {1e3 * max(diffs):+.1f}), "
                         f"{len(diffs)} seed{'s' * (len(diffs) != 1)}" if diffs else "-")
        lines.append(f"| {t['task']} | " + " | ".join(cells) + " |")
    return lines


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    if args.iter < 1 or args.n < 2 or args.ref_max < 0:
        raise SystemExit("--iter must be >= 1, --n >= 2 and --ref-max >= 0")
    report = run_bench(args)
    print()
    print(markdown(report))
    print("wrote " + ", ".join(report["files"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
