"""python -m bench quality: floors, every configuration over shot seeds, the conv ablation, forgetting, reuse."""
from __future__ import annotations

import json
import math
import shlex
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import fastlora
from bench import quality
from bench.__main__ import main as bench_main
from colorgan import Discriminator, Generator, save_checkpoint
from colorgan.checkpoint import load_checkpoint, resolve_checkpoint
from colorgan.demo import DEMO_CONV_MAX_RES, DEMO_R1
from colorgan.train.continual import TrainConfig
from tests.helpers import write_random_images

TASKS = {"black": "far-style", "flags": "subset", "twemoji": "near-style", "val": "far-style"}


def _data(root, shots=3):
    write_random_images(root / "source", 8, 0)
    tasks = {}
    for i, (t, kind) in enumerate(TASKS.items()):
        write_random_images(root / t / "full", 8, i + 1, shift=40 * i)
        (root / t / "train").mkdir()
        for p in sorted((root / t / "full").iterdir())[:shots]:
            (root / t / "train" / p.name).write_bytes(p.read_bytes())
        tasks[t] = {"kind": kind, "role": "validation" if t == "val" else "test"}
    (root / "manifest.json").write_text(json.dumps({"shots": shots, "tasks": tasks, "manifest_version": 2}))
    return root


def _args(tmp_path, net, *extra):
    argv = ["--real", str(tmp_path / "data"), "--base", str(tmp_path / "base"), "--iter", "2", "--n", "6",
            "--runs", str(tmp_path / "runs"), "--inception", str(net), "--no-progress", *extra]
    args = quality.build_parser().parse_args(argv)
    args.argv = argv
    return args


def _save_base(path, seed, overwrite=False):
    torch.manual_seed(seed)
    ch = {4: 16, 8: 16, 16: 8}
    save_checkpoint(path, Generator(16, 16, 2, channels=ch), Discriminator(16, channels=ch), overwrite=overwrite)


@pytest.fixture
def setup(tmp_path):
    _save_base(tmp_path / "base", 0)
    _data(tmp_path / "data")
    return tmp_path


def test_quality_bench_end_to_end(setup, tiny_net_path):
    tmp_path = setup
    report = quality.run_bench(_args(tmp_path, tiny_net_path, "--configs", "default,left", "--seeds", "0,1",
                                     "--rival-seeds", "1", "--ref-max", "6", "--out", str(tmp_path / "res")))
    assert [t["task"] for t in report["tasks"]] == ["flags", "twemoji", "black"]  # the test role only
    for t in report["tasks"]:
        assert t["kind"] == TASKS[t["task"]] and t["n"] == 6 and t["n_ref"] == 6 and t["n_full"] == 8
        for floor in ("noise", "source_gap", "memorisation"):
            assert math.isfinite(t["floors"][floor]["fid"]) and math.isfinite(t["floors"][floor]["kid"])
        assert set(t["scores"]) == {"base", "default", "left", "default-noconv"}
        for name, s in t["scores"].items():
            assert {"fid", "kid", "kid_std", "params"} <= set(s) and math.isfinite(s["fid"])
        # default on seeds 0 and 1, its conv ablation on the first seed, the rival on --rival-seeds
        assert [t["scores"][k]["seeds"] for k in ("default", "default-noconv", "left")] == [2, 1, 1]
        assert "fid_spread" in t["scores"]["default"]
        assert 0 < t["scores"]["default"]["params"] < t["scores"]["left"]["params"]
        assert t["forgetting_max_abs"] == 0.0
        assert t["bar"] == quality.verdict(t) and t["bar"] in ("pass", "fail")
        assert t["bar_misses"] == quality.bar_misses(t) and bool(t["bar_misses"]) == (t["bar"] == "fail")
        # per-seed scores, paired by shot seed: default on 0 and 1, left on 1 only
        per = {k: {r["seed"]: r["kid"] for r in t["scores"][k]["per_seed"]} for k in ("default", "left")}
        assert sorted(per["default"]) == [0, 1] and list(per["left"]) == [1]
        assert np.mean(list(per["default"].values())) == pytest.approx(t["scores"]["default"]["kid"])
        assert quality.paired_kid(t, "default", "left") == [per["default"][1] - per["left"][1]]
        assert quality.paired_kid(t, "default", "base") == [per["default"][x] - t["scores"]["base"]["kid"]
                                                            for x in (0, 1)]
    # the default is the demo's recipe (conv adapters up to 16 px, R1 0.1); the rivals adapt every resolution
    assert (report["settings"]["default"]["conv_max_res"], report["settings"]["left"]["conv_max_res"]) == \
        (DEMO_CONV_MAX_RES, 0) and report["settings"]["default"]["r1"] == DEMO_R1
    assert quality.CONFIGS["published"]["conv_max_res"] == 0
    # the thread counts the runs trained with are reported (results move with them)
    assert report["train_threads"]["default"] == [torch.get_num_threads()]
    assert f"| {torch.get_num_threads()} |" in quality.markdown(report)
    # and the training seconds per task, from the runs' summaries (positive: the runs trained)
    assert set(report["train_seconds_per_task"]) == {"default", "left"}
    assert all(v > 0 for v in report["train_seconds_per_task"].values())
    assert f"| {report['train_seconds_per_task']['left']:.0f} |" in quality.markdown(report)
    # seed 1 trains on other shots than seed 0's train split
    assert (tmp_path / "runs" / "left-seed1").is_dir() and not (tmp_path / "runs" / "left-seed0").exists()
    shots1 = sorted(p.name for p in (tmp_path / "runs" / "shots" / "seed1" / "flags").iterdir())
    assert len(shots1) == 3 and shots1 != sorted(p.name for p in (tmp_path / "data" / "flags" / "train").iterdir())
    saved = json.loads(next((tmp_path / "res").glob("*-quality.json")).read_text())
    assert saved["tasks"] == json.loads(json.dumps(report["tasks"]))
    md = next((tmp_path / "res").glob("*-quality.md")).read_text()
    assert "| flags (6/8) | subset |" in md and "noise floor" in md and "at most 6" in md
    assert "Paired on the same shots" in md and "| task | base | left |" in md and ", 1 seed |" in md
    assert sorted(p.name.split("-quality-")[-1] for p in (tmp_path / "res").glob("*.png")) == ["default.png", "left.png"]
    # each seed's record says what the near check measured (None where it did not run: the rivals, no network)
    assert all("near_gap" in r for t in report["tasks"] for s in t["scores"].values() for r in s.get("per_seed", []))
    for t in report["tasks"]:  # the default's runs measured with the bench's own network (--inception), the rival not
        assert all(isinstance(r["near_gap"], float) for r in t["scores"]["default"]["per_seed"])
        assert all(r["near_gap"] is None for r in t["scores"]["left"]["per_seed"])
    assert report["settings"]["left"]["near_anchor"] == 0 and report["settings"]["default"]["near_anchor"] > 0
    # the default's tasks keep the strength picked against their shots (the bench's network), the rival all of it
    assert report["settings"]["default"]["strength"] == "auto" and report["settings"]["left"]["strength"] == 1
    picked = json.loads((tmp_path / "runs" / "default-seed0" / "summary.json").read_text())["strength"]
    assert set(picked["shot_kid"]) == set(picked["tasks"]) == {t["task"] for t in report["tasks"]}
    # scores are filed under the run's id: a run removed and trained again under its name is scored again
    def keys():
        return [k for k in json.loads((tmp_path / "runs" / "scores.json").read_text()) if "|left-seed1#" in k]

    first_keys = keys()
    run_id = json.loads((tmp_path / "runs" / "left-seed1" / "config.json").read_text())["run_id"]
    assert first_keys and all(f"|left-seed1#{run_id}|" in k for k in first_keys)
    shutil.rmtree(tmp_path / "runs" / "left-seed1")
    quality.run_bench(_args(tmp_path, tiny_net_path, "--configs", "left", "--seeds", "1", "--ref-max", "6",
                            "--out", str(tmp_path / "res9")))
    assert len(keys()) == 2 * len(first_keys)
    # finished runs and their scores are reused (also one saved before a setting existed: it takes the default);
    # a run with other settings in the same folder is refused
    cfg_file = tmp_path / "runs" / "default-seed0" / "config.json"
    saved_cfg = json.loads(cfg_file.read_text())
    assert saved_cfg.pop("d_freeze") == 0
    cfg_file.write_text(json.dumps(saved_cfg))
    again = quality.run_bench(_args(tmp_path, tiny_net_path, "--configs", "default", "--seeds", "0",
                                    "--ref-max", "6", "--out", str(tmp_path / "res2")))
    first = {t["task"]: t for t in report["tasks"]}
    for t in again["tasks"]:
        assert t["floors"]["noise"] == first[t["task"]]["floors"]["noise"]
    with pytest.raises(SystemExit, match="another configuration"):
        quality.run_bench(_args(tmp_path, tiny_net_path, "--configs", "default", "--seeds", "0", "--iter", "3",
                                "--out", str(tmp_path / "res3")))
    with pytest.raises(SystemExit, match="refusing to overwrite"):
        quality.run_bench(_args(tmp_path, tiny_net_path, "--configs", "default", "--seeds", "0",
                                "--out", str(tmp_path / "res")))
    # the same base by another path (a copy, as when a base is shipped): its runs and scores are reused
    shutil.copytree(tmp_path / "base", tmp_path / "base-copy")
    copied = quality.run_bench(_args(tmp_path, tiny_net_path, "--configs", "default", "--seeds", "0", "--ref-max", "6",
                                     "--base", str(tmp_path / "base-copy"), "--out", str(tmp_path / "res5")))
    assert [t["scores"]["default"]["fid"] for t in copied["tasks"]] == \
        [t["scores"]["default"]["fid"] for t in again["tasks"]]
    # a copied runs folder (its seed-1 runs name shots inside the original) and a moved data folder: the same shots
    # by content, so the finished runs are reused; other shots under the saved path are refused
    shutil.copytree(tmp_path / "runs", tmp_path / "runs-copy")
    shutil.copytree(tmp_path / "data", tmp_path / "data-moved")
    ckpt_times = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs-copy" / "left-seed1").rglob("*") if p.is_file()}
    moved = quality.run_bench(_args(tmp_path, tiny_net_path, "--configs", "left", "--seeds", "1", "--ref-max", "6",
                                    "--runs", str(tmp_path / "runs-copy"), "--real", str(tmp_path / "data-moved"),
                                    "--out", str(tmp_path / "res7")))
    assert [t["scores"]["left"]["fid"] for t in moved["tasks"]] == [t["scores"]["left"]["fid"] for t in report["tasks"]]
    assert {p: p.stat().st_mtime_ns for p in ckpt_times} == ckpt_times  # reused, not trained again
    shot = next((tmp_path / "data" / "flags" / "train").iterdir())
    shot_bytes = shot.read_bytes()
    shutil.copyfile(next(p for p in (tmp_path / "data" / "flags" / "full").iterdir() if p.name != shot.name), shot)
    with pytest.raises(SystemExit, match=r"another configuration \(differs in tasks\)"):
        quality.run_bench(_args(tmp_path, tiny_net_path, "--configs", "default", "--seeds", "0", "--ref-max", "6",
                                "--real", str(tmp_path / "data-moved"), "--out", str(tmp_path / "res8")))
    shot.write_bytes(shot_bytes)
    # ... but a stopped run would continue from the path it was started with: refused under another path
    summary_file = tmp_path / "runs" / "default-seed0" / "summary.json"
    summary_text = summary_file.read_text()
    summary_file.write_text(json.dumps({**json.loads(summary_text), "finished": False}))
    with pytest.raises(SystemExit, match="another configuration"):
        quality.run_bench(_args(tmp_path, tiny_net_path, "--configs", "default", "--seeds", "0", "--ref-max", "6",
                                "--base", str(tmp_path / "base-copy"), "--out", str(tmp_path / "res6")))
    summary_file.write_text(summary_text)
    # a new base in the same place (a newly shipped base): the old runs and their cached scores are not reused
    _save_base(tmp_path / "base", 1, overwrite=True)
    with pytest.raises(SystemExit, match="trained on another base"):
        quality.run_bench(_args(tmp_path, tiny_net_path, "--configs", "default", "--seeds", "0", "--ref-max", "6",
                                "--out", str(tmp_path / "res4")))
    old_base = quality.base_checksum(tmp_path / "runs" / "default-seed0" / "checkpoint")
    assert old_base and quality.base_checksum(tmp_path / "base") != old_base
    cached = json.loads((tmp_path / "runs" / "scores.json").read_text())
    runs = [k for k in cached if not k.startswith("floor|")]
    assert runs and all(k.split("|")[0] == old_base[:16] for k in runs)
    # the base's own score is kept per base: the old one and the new one (scored before the old runs were refused)
    assert {k.split("|")[2] for k in cached if k.startswith("floor|base|")} == \
        {old_base[:16], quality.base_checksum(tmp_path / "base")[:16]}


def test_validation_budgets_and_custom_configs(setup, tiny_net_path):
    tmp_path = setup
    args = _args(tmp_path, tiny_net_path, "--tasks", "validation", "--configs", "default",
                 "--config", "alin1:alpha_linear=1", "--seeds", "0,1", "--budgets", "1",
                 "--config-seeds", "alin1:1", "--no-ablation", "--out", str(tmp_path / "res dir"))
    report = quality.run_bench(args)
    # the recorded command runs as written (a path with a space stays one argument)
    assert shlex.split(report["command"]) == ["python", "-m", "bench", "quality", *args.argv]
    (t,) = report["tasks"]
    assert t["task"] == "val" and t["role"] == "validation"
    assert set(t["scores"]) == {"base", "default", "default@1", "alin1", "alin1@1"}
    # --config-seeds: alin1 on shot seed 1 only, named in the table's header
    assert report["seeds_of"] == {"default": [0, 1], "alin1": [1]}
    # without --rival-seeds the other configurations run on --seeds (the whole table from one plain command)
    assert report["rival_seeds"] == [0, 1]
    assert not (tmp_path / "runs" / "alin1-seed0").exists()
    assert "alin1 [1]" in quality.markdown(report).splitlines()[0]
    cfg = json.loads((tmp_path / "runs" / "alin1-seed1" / "config.json").read_text())
    assert cfg["alpha_linear"] == 1
    # the results record what each configuration resolved to (the defaults included)
    assert report["settings"]["alin1"]["alpha_linear"] == 1
    assert report["settings"]["default"]["alpha_linear"] == TrainConfig.alpha_linear
    assert report["settings"]["default"]["ema_warmup"] is True
    assert (report["settings"]["default"]["style_anchor"], report["settings"]["default"]["mapping_anchor"]) == \
        (TrainConfig.style_anchor, TrainConfig.mapping_anchor)
    assert quality.parse_configs([], ["a:style_anchor=30,mapping_anchor=30"])["a"] == {
        "style_anchor": 30, "mapping_anchor": 30}
    assert quality.parse_configs([], ["p:style_anchor=twemoji=30,openmoji=30,mapping_anchor=b=5"])["p"] == {
        "style_anchor": "twemoji=30,openmoji=30", "mapping_anchor": "b=5"}
    assert quality.parse_configs([], ["w:ema_warmup=false"])["w"] == {"ema_warmup": False}
    # the per-task --mapping-adapters keeps its commas; what follows it that is a setting starts a new one
    assert quality.parse_configs([], ["m:mapping_adapters=flags=keep,openmoji=drop,alpha_linear=1"])["m"] == {
        "mapping_adapters": "flags=keep,openmoji=drop", "alpha_linear": 1}
    assert quality.parse_configs([], ["m:alpha_linear=1,mapping_adapters=drop,flags=keep"])["m"] == {
        "alpha_linear": 1, "mapping_adapters": "drop,flags=keep"}
    assert quality.parse_configs([], ["m:mapping_adapters=1,flags=keep"])["m"] == {"mapping_adapters": "1,flags=keep"}
    for bad in ("x:nope=1", "x:iter=5"):
        with pytest.raises(SystemExit, match="not a `colorgan train` setting"):
            quality.parse_configs([], [bad])
    # a per-task --mapping-adapters naming a task that is not in the run is refused before anything trains
    with pytest.raises(SystemExit, match="--config mix: mapping_adapters names task 'nope', which is not one of"):
        quality.run_bench(_args(tmp_path, tiny_net_path, "--configs", "default", "--seeds", "0",
                                "--config", "mix:mapping_adapters=flags=keep,nope=drop", "--out", str(tmp_path / "r2")))
    assert not (tmp_path / "runs" / "mix-seed0").exists()
    with pytest.raises(SystemExit, match="unknown configuration"):
        quality.parse_configs(["nope"], [])
    assert quality.config_seeds(["default", "left"], [0, 1], [2], ["default:3"]) == {"default": [3], "left": [2]}
    for bad in ("nope:1", "alin1:", "alin1:x"):
        with pytest.raises(SystemExit, match="--config-seeds must look like"):
            quality.config_seeds(["default", "alin1"], [0], [0], [bad])


def _task(kind, **scores):
    """A task record with FID / KID×10³ / stored parameters per configuration (KID std 2×10⁻³ everywhere)."""
    return {"kind": kind, "scores": {k: {"fid": f, "kid": kid / 1e3, "kid_std": 2e-3, "params": p}
                                     for k, (f, kid, p) in scores.items()}}


def test_bar_names_every_condition_it_misses():
    base, d = (200.0, 130.0, 0), (160.0, 100.0, 23247)
    ok = _task("subset", base=base, default=d, published=(205.0, 135.0, 13263),
               **{"published-r2": (200.0, 120.0, 23588)}, left=(170.0, 110.0, 26593))
    assert quality.bar_misses(ok) == [] and quality.verdict(ok) == "pass"
    # without a published configuration at the default's budget, the win is not "at no more stored parameters"
    small = _task("subset", base=base, default=d, published=(205.0, 135.0, 13263))
    assert quality.bar_misses(small) == ["every published configuration stores fewer parameters (13,263 vs 23,247)"]
    assert quality.verdict(small) == "fail"
    # a rival ahead on one measure, and a KID gain of 2.5 std (3 needed)
    close = _task("far-style", base=base, default=(160.0, 125.0, 23247), left=(150.0, 126.0, 26593))
    assert quality.bar_misses(close) == ["KID 2.5 std below the base (more than 3 below needed)",
                                         "left ahead on FID (150.0 vs 160.0)"]
    assert quality.bar_misses(_task("subset", base=base, default=(201.0, 100.0, 1)))[0].startswith("FID not below")
    # worse than the base: the distance is said as "above", never as a negative "below"
    assert quality.bar_misses(_task("subset", base=base, default=(190.0, 139.0, 1))) == \
        ["KID 4.5 std above the base (more than 3 below needed)"]
    # near styles: at most 2 std worse than the base, rivals and sizes aside
    assert quality.verdict(_task("near-style", base=(100.0, 40.0, 0), default=(120.0, 44.0, 9))) == "pass"
    assert quality.bar_misses(_task("near-style", base=(100.0, 40.0, 0), default=(90.0, 44.2, 9))) == \
        ["KID 2.1 std above the base (at most 2)"]
    assert quality.verdict({"kind": "subset", "scores": {"base": {}}}) == "-"


def test_each_rival_method_has_a_configuration_at_the_defaults_budget_on_the_shipped_base():
    G = load_checkpoint(resolve_checkpoint("emoji32"))[0]
    stored = {}
    for name, overrides in quality.CONFIGS.items():
        fastlora.add_task(G, name, TrainConfig(ckpt="emoji32", tasks=["t=x"], **overrides).adapter_config())
        stored[name] = fastlora.count_parameters(G, name)["stored"]
    assert stored["published"] < stored["default"] <= stored["published-r2"] and stored["default"] <= stored["left"]
    assert set(quality.RIVALS) <= set(quality.CONFIGS)


def test_missing_data_set_is_one_line(tmp_path):
    with pytest.raises(SystemExit, match=r"^bench quality: expected a benchmark manifest at .*manifest\.json"):
        bench_main(["quality", "--real", str(tmp_path / "nope"), "--runs", str(tmp_path / "runs"),
                    "--out", str(tmp_path / "res"), "--no-progress"])


def test_forgetting_detects_a_changed_row(tmp_path):
    samples = tmp_path / "samples"
    samples.mkdir()
    rng = np.random.default_rng(0)
    final = rng.integers(0, 255, (3 * 18 + 2, 8 * 18 + 2, 3), dtype=np.uint8)  # base, a, b rows
    Image.fromarray(final).save(samples / "after_b.png")
    early = final[: 2 * 18 + 2].copy()
    early[5, 7, 1] ^= 0x10
    Image.fromarray(early).save(samples / "after_a.png")
    assert quality.forgetting(tmp_path, ["a", "b"]) == {"a": 16.0, "b": 0.0}


def test_score_cache_shared_by_two_processes_keeps_both(tmp_path):
    path = tmp_path / "runs" / "scores.json"
    a, b = quality.ScoreCache(path), quality.ScoreCache(path)  # both opened before either wrote
    assert a.get("x", lambda: {"fid": 1.0}) == {"fid": 1.0}
    assert b.get("y", lambda: {"fid": 2.0}) == {"fid": 2.0}
    assert json.loads(path.read_text()) == {"x": {"fid": 1.0}, "y": {"fid": 2.0}}
    assert quality.ScoreCache(path).get("x", lambda: pytest.fail("recomputed a cached score")) == {"fid": 1.0}


def test_shot_folders_wait_for_the_runs_folder_lock(setup):
    """Processes sharing a runs folder may draw the same shot seed at once: the copy waits for the lock."""
    import fcntl
    import threading

    real, runs = setup / "data", setup / "runs"
    runs.mkdir()
    result = {}
    with open(runs / "shots.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process holds it
        worker = threading.Thread(target=lambda: result.update(quality.shot_folders(real, runs, ["flags"], 3, 3)))
        worker.start()
        worker.join(0.5)
        assert worker.is_alive() and not (runs / "shots").exists()
    worker.join(10)
    assert not worker.is_alive() and len(list(result["flags"].iterdir())) == 3
    assert quality.shot_folders(real, runs, ["flags"], 3, 3) == result  # already there: kept


def test_floors_are_cached_by_content(setup, tiny_net_path):
    """The floors and the base's score are computed once per content: a later invocation extracts no features, a
    changed reference set, other shots or another base are scored again."""
    tmp_path, real, tasks = setup, setup / "data", ["flags", "black"]
    cache = quality.ScoreCache(tmp_path / "runs" / "scores.json")
    shots = {s: quality.shot_folders(real, tmp_path / "runs", tasks, s, 3) for s in (0, 1)}
    scorer = quality.Scorer(str(tiny_net_path), progress=False)
    first = quality.floors(scorer, real, tmp_path / "base", tasks, 6, [0, 1], shots, 6, cache)
    assert first == quality.floors(scorer, real, tmp_path / "base", tasks, 6, [0, 1], shots, 6)  # uncached: same

    def fail(*a, **k):
        pytest.fail("features extracted for a cached score")

    for name in ("folder", "images", "generated"):
        setattr(scorer, name, fail)
    again = quality.floors(scorer, real, tmp_path / "base", tasks, 6, [0, 1], shots,
                           6, quality.ScoreCache(tmp_path / "runs" / "scores.json"))
    assert again == first
    scorer = quality.Scorer(str(tiny_net_path), progress=False)
    write_random_images(real / "flags" / "full", 8, 99)  # a rebuilt reference set
    _save_base(tmp_path / "base", 1, overwrite=True)
    new = quality.floors(scorer, real, tmp_path / "base", tasks, 6, [0, 1], shots, 6, cache)
    assert new["flags"]["noise"] != first["flags"]["noise"] and new["black"]["noise"] == first["black"]["noise"]
    assert new["black"]["base"] != first["black"]["base"]
    assert new["black"]["memorisation"] == first["black"]["memorisation"]


def test_roles_switches_each_adapter_role_off_at_sampling_time(setup, tiny_net_path):
    from bench import roles

    tmp_path = setup
    report = quality.run_bench(_args(tmp_path, tiny_net_path, "--configs", "default", "--seeds", "0", "--ref-max", "6",
                                     "--out", str(tmp_path / "res")))
    flags = next(t for t in report["tasks"] if t["task"] == "flags")
    argv = ["--ckpt", str(tmp_path / "runs" / "default-seed0" / "checkpoint"), "--task", "flags",
            "--real", str(tmp_path / "data" / "flags" / "full"), "--n", "6", "--ref-max", "6",
            "--inception", str(tiny_net_path), "--out", str(tmp_path / "roles"), "--no-progress"]
    assert roles.main([*argv, "--scales", "1,0.5", "--mean-shift"]) == 0
    saved = json.loads(next((tmp_path / "roles").glob("*-roles-flags.json")).read_text())
    rows = saved["rows"]
    assert list(rows) == ["task", "without mapping", "without style", "without conv", "mapping ×1", "mapping ×0.5",
                          "style ×1", "style ×0.5", "conv ×1", "conv ×0.5", "mapping mean shift", "base"]
    for r in ("mapping", "style", "conv"):  # x1 is the task through merged weights; x0.5 lies between
        assert rows[f"{r} ×1"]["fid"] == pytest.approx(rows["task"]["fid"], rel=1e-4)
    assert rows["mapping ×0.5"]["fid"] not in (rows["task"]["fid"], rows["without mapping"]["fid"])
    # the same samples as the quality bench: the whole task, its conv ablation, the unadapted base
    assert rows["task"]["fid"] == pytest.approx(flags["scores"]["default"]["fid"], rel=1e-9)
    assert rows["without conv"]["fid"] == pytest.approx(flags["scores"]["default-noconv"]["fid"], rel=1e-9)
    assert rows["base"]["fid"] == pytest.approx(flags["scores"]["base"]["fid"], rel=1e-9)
    assert rows["without mapping"]["fid"] != rows["task"]["fid"]  # the mapping adapters trained
    assert rows["mapping mean shift"]["fid"] not in (rows["task"]["fid"], rows["without mapping"]["fid"])
    assert saved["command"].startswith("python -m bench roles --ckpt")
    assert "| without style |" in next((tmp_path / "roles").glob("*-roles-flags.md")).read_text()
    with pytest.raises(SystemExit, match="refusing to overwrite"):
        roles.main(argv)
    with pytest.raises(SystemExit, match="--roles takes some of"):
        roles.main([*argv, "--roles", "disc", "--overwrite"])
    for bad in ("1.5", "half", "-0.5"):
        with pytest.raises(SystemExit, match="--scales takes fractions between 0 and 1"):
            roles.main([*argv, "--scales", bad, "--overwrite"])
    with pytest.raises(SystemExit, match="cannot sample task 'nope'"):
        roles.main([*argv[:3], "nope", *argv[4:], "--overwrite"])


def test_roles_task_scales_and_the_shot_pick(setup, tiny_net_path):
    from bench import roles
    from bench.quality_scores import Scorer
    from colorgan.metrics import kid
    from colorgan.metrics.features import folder_features

    tmp_path = setup
    quality.run_bench(_args(tmp_path, tiny_net_path, "--configs", "default", "--seeds", "0", "--ref-max", "6",
                            "--out", str(tmp_path / "res")))
    ckpt, shots = tmp_path / "runs" / "default-seed0" / "checkpoint", tmp_path / "data" / "flags" / "train"
    argv = ["--ckpt", str(ckpt), "--task", "flags", "--real", str(tmp_path / "data" / "flags" / "full"),
            "--roles", "", "--task-scales", "0.5", "--shots", str(shots), "--n", "6", "--ref-max", "6",
            "--inception", str(tiny_net_path), "--out", str(tmp_path / "roles"), "--no-progress"]
    assert roles.main(argv) == 0
    saved = json.loads(next((tmp_path / "roles").glob("*-roles-flags.json")).read_text())
    rows = saved["rows"]
    assert list(rows) == ["task", "task ×0.5", "base"]
    assert rows["task ×0.5"]["fid"] not in (rows["task"]["fid"], rows["base"]["fid"])
    scorer = Scorer(str(tiny_net_path), progress=False)
    shot_feats = folder_features(shots, scorer.net, 32, use_cache=False, progress=False)
    assert shot_feats.shape[0] == len(list(shots.iterdir()))
    assert rows["task"]["shot_kid"] == pytest.approx(kid(scorer.generated(ckpt, "flags", 6), shot_feats)["mean"])
    assert rows["base"]["shot_kid"] == pytest.approx(kid(scorer.generated(ckpt, None, 6), shot_feats)["mean"])
    assert saved["shot_pick"] == min(rows, key=lambda k: rows[k]["shot_kid"])
    assert f"Shot pick: {saved['shot_pick']}." in next((tmp_path / "roles").glob("*-roles-flags.md")).read_text()
    tied = {"base": {"shot_kid": 1.0}, "task ×0.5": {"shot_kid": 1.0}, "task": {"shot_kid": 2.0}}
    assert roles.shot_pick(tied, [0.5]) == "task ×0.5"  # ties: the larger fraction kept
    with pytest.raises(SystemExit, match="--shots: no folder"):
        roles.main([*argv[:argv.index("--shots") + 1], str(tmp_path / "none"), *argv[argv.index("--shots") + 2:],
                    "--overwrite"])
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "a.png").write_bytes(next(shots.iterdir()).read_bytes())
    with pytest.raises(SystemExit, match="KID needs at least 2 images, the folder has 1"):
        roles.main([*argv[:argv.index("--shots") + 1], str(tmp_path / "one"), *argv[argv.index("--shots") + 2:],
                    "--overwrite"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="cannot read the shots|the folder has 0"):
        roles.main([*argv[:argv.index("--shots") + 1], str(tmp_path / "empty"), *argv[argv.index("--shots") + 2:],
                    "--overwrite"])
    with pytest.raises(SystemExit, match="--task-scales takes fractions"):
        roles.main([*argv, "--task-scales", "2", "--overwrite"])
    with pytest.raises(SystemExit, match="--roles takes some of"):
        roles.main([*argv, "--task-scales", "", "--overwrite"])


def _trained_tiny_generator():
    """A seeded 8 px generator with one left-linear task "t" whose every adapter tensor moved (trained-looking),
    active."""
    torch.manual_seed(0)
    G = Generator(8, style_dim=8, n_mlp=2, channels={4: 8, 8: 8})
    fastlora.add_task(G, "t", fastlora.AdapterConfig(kind="left-linear"))
    with torch.no_grad():
        for p in fastlora.task_parameters(G, "t"):
            p.add_(0.3 * torch.randn_like(p))
    fastlora.set_task(G, "t")
    return G


def test_scale_roles_keeps_that_fraction_of_a_roles_effect():
    from bench.quality_scores import scale_roles

    G = _trained_tiny_generator()
    mapping = [m for _, m in fastlora.adapted_layers(G) if m.role == "mapping"]
    base_w = [m.weight.detach().clone() for m in mapping]
    task_w = [fastlora.merged_weights(m, "t")[0] for m in mapping]
    z = torch.randn(3, 8)
    with torch.no_grad():
        task_out, task_style = G(z, noise_mode="const"), G.style(z)
    scale_roles(G, "t", ["mapping"], 0.5)
    for m, w0, w1 in zip(mapping, base_w, task_w):
        assert torch.allclose(fastlora.merged_weights(m, "t")[0], 0.5 * (w0 + w1), atol=1e-6)
    G1 = _trained_tiny_generator()
    scale_roles(G1, "t", ["mapping"], 1.0)
    with torch.no_grad():
        assert torch.allclose(G1.style(z), task_style, atol=1e-5)  # x1: the task, through merged weights
        assert torch.allclose(G1(z, noise_mode="const"), task_out, atol=1e-4)
    G0, Gr = _trained_tiny_generator(), _trained_tiny_generator()
    scale_roles(G0, "t", ["mapping"], 0.0)
    fastlora.reset_task(Gr, "t", roles=("mapping",))
    with torch.no_grad():
        assert torch.equal(G0.style(z), Gr.style(z))  # x0: the role switched off
        assert not torch.allclose(G0.style(z), task_style, atol=1e-3)


def test_task_scales_are_the_tasks_strength():
    """`bench roles --task-scales s` (every role through merged weights) samples what fastlora.set_strength keeps."""
    from bench.quality_scores import scale_roles
    from bench.roles import ROLES

    z = torch.randn(3, 8)
    for s in (0.25, 0.75):
        scaled, strong = _trained_tiny_generator(), _trained_tiny_generator()
        scale_roles(scaled, "t", ROLES, s)
        fastlora.set_strength(strong, "t", s)
        with torch.no_grad():
            a, b = scaled(z, noise_mode="const"), strong(z, noise_mode="const")
        assert torch.allclose(a, b, atol=1e-5), float((a - b).abs().max())
        with torch.no_grad():
            assert not torch.allclose(a, _trained_tiny_generator()(z, noise_mode="const"), atol=1e-3)


def test_shift_mapping_keeps_only_the_mapping_adapters_mean_effect_on_w():
    from bench.quality_scores import shift_mapping
    from colorgan.generator import W_AVG_SAMPLES, W_AVG_SEED

    torch.manual_seed(0)
    G = Generator(8, style_dim=8, n_mlp=2, channels={4: 8, 8: 8})
    G.update_w_avg()
    fastlora.add_task(G, "t", fastlora.AdapterConfig(kind="left-linear"))
    with torch.no_grad():
        for p in fastlora.task_parameters(G, "t"):
            p.add_(0.3 * torch.randn_like(p))
    zc = torch.randn(W_AVG_SAMPLES, 8, generator=torch.Generator().manual_seed(W_AVG_SEED))
    z = torch.randn(5, 8)
    with torch.no_grad():
        fastlora.set_task(G, "t")
        expected_dw = G.mapping(zc).double().mean(0)
        fastlora.set_task(G, None)
        expected_dw -= G.mapping(zc).double().mean(0)
        base_w = G.mapping(z)
        fastlora.set_task(G, "t")
        task_w = G.mapping(z)
    dw = shift_mapping(G, "t")
    assert torch.allclose(dw.double(), expected_dw, atol=1e-5) and dw.abs().max() > 1e-3
    assert fastlora.active_task(G) == "t"  # the rest of the task stays on
    with torch.no_grad():
        w = G.mapping(z)
        assert torch.allclose(w, base_w + dw, atol=1e-5)
        assert not torch.allclose(w, task_w, atol=1e-3)
        assert torch.allclose(G.latents(z)[:, 0], w)  # sampling goes through the shifted mapping


def test_near_bench_measures_each_seeds_shots_against_the_base(setup, tiny_net_path, monkeypatch):
    """python -m bench near: per task and shot seed, the gap between those shots (seed 0: the data's train split,
    others: `bench quality`'s draw) and the base's samples, checked against a float64 KID written out here."""
    from bench import near as near_bench
    from colorgan.metrics.features import FeatureNetwork, folder_features
    from colorgan.train import near

    tmp_path = setup
    net = FeatureNetwork(tiny_net_path)
    G = load_checkpoint(resolve_checkpoint(tmp_path / "base"), load_d=False)[0]
    base = near.base_features(G, net, fastlora.base_checksum(G)).astype(np.float64)

    def gap(folder):  # KID x 10^3, unbiased, cubic polynomial kernel (x.y / d + 1)^3
        x = folder_features(folder, net, G.size, use_cache=False, progress=False).astype(np.float64)
        d = x.shape[1]
        k = lambda a, b: (a @ b.T / d + 1.0) ** 3  # noqa: E731
        m, n = len(x), len(base)
        kxx, kyy = k(x, x), k(base, base)
        return 1e3 * ((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                      - 2 * k(x, base).mean())

    def msd(x):  # mean squared distance over the pairs of distinct rows, pair by pair
        return np.mean([((a - b) ** 2).sum() for i, a in enumerate(x) for j, b in enumerate(x) if i != j])

    def spread(folder):
        return msd(folder_features(folder, net, G.size, use_cache=False, progress=False).astype(np.float64)) / msd(base)

    argv = ["--real", str(tmp_path / "data"), "--base", str(tmp_path / "base"), "--tasks", "flags,twemoji",
            "--seeds", "0,1", "--runs", str(tmp_path / "runs"), "--inception", str(tiny_net_path),
            "--out", str(tmp_path / "res")]
    seed0 = {t: gap(tmp_path / "data" / t / "train") for t in ("flags", "twemoji")}
    assert seed0["flags"] != seed0["twemoji"]
    monkeypatch.setattr(near, "NEAR_GAP", sum(seed0.values()) / 2)  # one task's seed-0 shots on each side
    assert bench_main(["near", *argv]) == 0
    saved = json.loads(next((tmp_path / "res").glob("*-near-flags-twemoji.json")).read_text())
    assert list(saved["tasks"]) == ["flags", "twemoji"] and saved["seeds"] == [0, 1]
    assert saved["base_samples"] == near.BASE_SAMPLES and saved["threshold"] == near.NEAR_GAP
    for t, row in saved["tasks"].items():
        assert row["kind"] == TASKS[t]
        folders = [tmp_path / "data" / t / "train", tmp_path / "runs" / "shots" / "seed1" / t]
        assert sorted(p.name for p in folders[1].iterdir()) == [f"{i}.png" for i in sorted(
            quality.choose_shots([p.stem for p in (tmp_path / "data" / t / "full").iterdir()], 3, 1, t))]
        assert row["gaps"] == pytest.approx([gap(f) for f in folders], rel=1e-6)
        assert row["near"] == [g < near.NEAR_GAP for g in row["gaps"]]
        assert row["spreads"] == pytest.approx([spread(f) for f in folders], rel=1e-6)
        assert len(set(row["spreads"])) == 2 and all(v > 0 for v in row["spreads"])
    close = min(seed0, key=seed0.get)
    assert [saved["tasks"][t]["near"][0] for t in ("flags", "twemoji")] == [t == close for t in ("flags", "twemoji")]
    md = next((tmp_path / "res").glob("*-near-flags-twemoji.md")).read_text()
    assert f"| {close} ({TASKS[close]}) | **{seed0[close]:.1f}** |" in md
    with pytest.raises(SystemExit, match="refusing to overwrite"):
        bench_main(["near", *argv])
    # --draws N: the gaps of seeds 1..N's draws, scored from the full set's features, equal the copied shots' gaps
    assert bench_main(["near", *argv, "--seeds", "0,1,2", "--draws", "2", "--overwrite"]) == 0
    saved = json.loads(next((tmp_path / "res").glob("*-near-flags-twemoji.json")).read_text())
    for t, row in saved["tasks"].items():
        draws = row["draws"]
        assert draws["seeds"] == [1, 2] and draws["gaps"] == pytest.approx(row["gaps"][1:], rel=1e-4)
        assert draws["spreads"] == pytest.approx(row["spreads"][1:], rel=1e-4)
        assert draws["near_share"] == sum(g < near.NEAR_GAP for g in draws["gaps"]) / 2
    md = next((tmp_path / "res").glob("*-near-flags-twemoji.md")).read_text()
    assert "Over the draws of shot seeds 1–2" in md and f"| {close} ({TASKS[close]}) | " in md.split("Over the")[1]
    assert f"| flags (subset) | {saved['tasks']['flags']['spreads'][0]:.3f} |" in md
    with pytest.raises(SystemExit, match="--draws takes"):
        bench_main(["near", *argv, "--draws", "-1", "--overwrite"])
    for bad in ("x", "-1"):
        with pytest.raises(SystemExit, match="--seeds takes shot seeds"):
            bench_main(["near", *argv, "--seeds", bad, "--overwrite"])
    with pytest.raises(SystemExit, match="not in the data's manifest"):
        bench_main(["near", *argv, "--tasks", "nope", "--overwrite"])
