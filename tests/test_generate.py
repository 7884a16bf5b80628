"""colorgan generate: seeds, files, grid, reproducibility and error messages."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import fastlora
from colorgan import Generator, save_checkpoint
from colorgan.cli import main
from colorgan.generate import generate
from colorgan.seeds import parse_seeds, seed_to_z, seeds_to_z
from fastlora import AdapterConfig

CH = {4: 16, 8: 16, 16: 8, 32: 8}


def test_parse_seeds():
    assert parse_seeds("0-3,7, 10-11") == [0, 1, 2, 3, 7, 10, 11]
    assert parse_seeds("5") == [5]
    for bad, msg in (("", "empty"), ("1,,2", "bad seed ''"), ("3-1", "below the start"), ("-1", "bad seed"),
                     ("a-b", "bad seed"), ("1.5", "bad seed"), ("1-3,2", "appears twice"),
                     (str(2 ** 32), "out of range")):
        with pytest.raises(ValueError, match=msg):
            parse_seeds(bad)


def test_seed_to_z_is_fixed():
    a = seeds_to_z([3, 1], 16)
    assert torch.equal(a[0], seed_to_z(3, 16)) and torch.equal(a[1], torch.randn(16, generator=torch.Generator().manual_seed(1)))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    G = Generator(32, 16, 2, channels=CH)
    with torch.no_grad():
        for m in G.modules():
            if hasattr(m, "noise") and hasattr(m.noise, "weight"):
                m.noise.weight.fill_(0.3)
    fastlora.add_task(G, "fresh", AdapterConfig())  # identity at init: must render like the base
    fastlora.add_task(G, "sketch", AdapterConfig(rank=2))
    with torch.no_grad():
        for p in fastlora.task_parameters(G, "sketch"):
            p.add_(torch.randn_like(p) * 0.3)
    path = tmp_path_factory.mktemp("g") / "ck"
    save_checkpoint(path, G)
    return path


def load(p):
    return np.asarray(Image.open(p))


def test_generate_files_grid_and_reproducibility(ckpt, tmp_path):
    r = generate(ckpt, "base,all", "0-2,7", tmp_path / "a", truncation=0.7, batch=3, grid=True, progress=False)
    assert r["tasks"] == ["base", "fresh", "sketch"]
    for t in r["tasks"]:
        assert sorted(p.name for p in (tmp_path / "a" / t).iterdir()) == [
            "seed0000.png", "seed0001.png", "seed0002.png", "seed0007.png"]
    grid = load(tmp_path / "a" / "grid.png")
    assert grid.shape == (3 * 32, 4 * 32, 3)
    assert np.array_equal(grid[64:96, 96:128], load(tmp_path / "a" / "sketch" / "seed0007.png"))
    # another run, other batch size and task list: identical base images; identity task == base
    # (across batch sizes the CPU's BLAS may round differently: up to one grey level, never more)
    generate(ckpt, "sketch,base", "7,1", tmp_path / "b", truncation=0.7, batch=1, progress=False)
    for s in ("seed0007.png", "seed0001.png"):
        assert_same_image(load(tmp_path / "a" / "base" / s), load(tmp_path / "b" / "base" / s))
        assert_same_image(load(tmp_path / "a" / "sketch" / s), load(tmp_path / "b" / "sketch" / s))
        assert np.array_equal(load(tmp_path / "a" / "fresh" / s), load(tmp_path / "a" / "base" / s))
        assert np.abs(load(tmp_path / "a" / "sketch" / s).astype(int) - load(tmp_path / "a" / "base" / s)).max() > 1
    # random noise is per seed: same across runs and batch sizes
    generate(ckpt, "base", "1,7", tmp_path / "c", noise_mode="random", batch=2, progress=False)
    generate(ckpt, "base", "7", tmp_path / "d", noise_mode="random", batch=1, progress=False)
    assert_same_image(load(tmp_path / "c" / "base" / "seed0007.png"), load(tmp_path / "d" / "base" / "seed0007.png"))


def assert_same_image(a: np.ndarray, b: np.ndarray) -> None:
    """Equal up to one grey level in at most 1 % of the values (rounding of a different batch size)."""
    diff = np.abs(a.astype(int) - b.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() <= 0.01, (diff.max(), (diff > 0).mean())


def test_cli_generate_and_errors(ckpt, tmp_path, capsys):
    out = str(tmp_path / "o")
    assert main(["generate", "--ckpt", str(ckpt), "--task", "sketch", "--seeds", "4-5", "--outdir", out,
                 "--grid", "--no-progress"]) == 0
    assert "wrote 2 images" in capsys.readouterr().out
    assert (tmp_path / "o" / "sketch" / "seed0005.png").is_file() and (tmp_path / "o" / "grid.png").is_file()
    base = ["generate", "--ckpt", str(ckpt), "--outdir", out, "--no-progress"]
    cases = [
        (["--task", "nope", "--seeds", "4"], "unknown task 'nope'"),
        (["--task", "sketch", "--seeds", "9-2"], "below the start"),
        (["--task", "sketch", "--seeds", "4", "--overwrite", "--trunc=-1"], "--trunc"),
        (["--task", "sketch", "--seeds", "4-5"], "already exist"),
        (["--task", "sketch", "--seeds", "4", "--overwrite", "--device", "tpu"], "--device"),
    ]
    for extra, msg in cases:
        assert main(base + extra) == 1, extra
        assert msg in capsys.readouterr().err, extra
    assert main(["generate", "--ckpt", str(tmp_path / "none"), "--seeds", "1", "--outdir", out]) == 1
    assert "checkpoint folder" in capsys.readouterr().err


def test_cli_generate_at_another_strength(ckpt, tmp_path, capsys):
    """--strength renders a task at another strength for this command only: 0 is the base's image, 1 the saved
    task's, ½ neither; per-task items; the checkpoint's saved strength is unchanged; bad values are one line."""
    cfg_file = ckpt / "tasks" / "sketch" / fastlora.bank.CONFIG_FILE
    saved = cfg_file.read_bytes()
    run = ["generate", "--ckpt", str(ckpt), "--seeds", "3", "--no-progress"]
    assert main(run + ["--task", "base,sketch", "--outdir", str(tmp_path / "saved")]) == 0
    assert "at strength" not in capsys.readouterr().out
    for spec, name in (("0", "s0"), ("sketch=0.5", "half"), ("0.25,sketch=1", "s1")):
        assert main(run + ["--task", "sketch", "--strength", spec, "--outdir", str(tmp_path / name)]) == 0
    out = capsys.readouterr().out
    assert "sketch at strength 0)" in out and "sketch at strength 0.5)" in out and "sketch at strength 1)" in out
    img = {n: load(tmp_path / n / "sketch" / "seed0003.png").astype(int) for n in ("saved", "s0", "half", "s1")}
    base = load(tmp_path / "saved" / "base" / "seed0003.png").astype(int)
    assert np.array_equal(img["s0"], base) and np.array_equal(img["s1"], img["saved"])
    assert np.abs(img["half"] - base).max() > 1 and np.abs(img["half"] - img["saved"]).max() > 1
    assert cfg_file.read_bytes() == saved
    bad = run + ["--task", "sketch", "--outdir", str(tmp_path / "bad")]
    for spec, msg in (("2", "expected a number between 0 and 1"), ("nope=0.5", "not one of the checkpoint's tasks"),
                      ("auto", "expected a number between 0 and 1"), ("0.5,0.2", "more than one setting")):
        assert main(bad + ["--strength", spec]) == 1, spec
        err = capsys.readouterr().err
        assert msg in err and len(err.strip().splitlines()) == 1, (spec, err)
    assert not (tmp_path / "bad").exists()
    with pytest.raises(KeyError, match="strength for unknown task 'nope'"):  # the library call checks names too
        generate(ckpt, "sketch", "3", tmp_path / "lib", strengths={"nope": 0.5}, progress=False)


def test_strength_refused_where_the_kind_has_no_exact_form(tmp_path, capsys):
    """LeFT on convolutions has no exact strength below 1: --strength says so in one line and writes nothing."""
    torch.manual_seed(1)
    G = Generator(32, 16, 2, channels=CH)
    fastlora.add_task(G, "lf", AdapterConfig(kind="left"))
    path = save_checkpoint(tmp_path / "ck", G)
    assert main(["generate", "--ckpt", str(path), "--seeds", "0", "--strength", "0.5", "--outdir",
                 str(tmp_path / "o"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "strength of task 'lf'" in err and "not available for kind 'left'" in err
    assert not any((tmp_path / "o").rglob("*.png"))
