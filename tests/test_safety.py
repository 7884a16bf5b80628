"""Nothing a user has is lost: --overwrite, the shipped base, untrusted files, diverging runs, bad images,
interrupted work, concurrent runs, and one clear line instead of a traceback. Each case failed before."""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fastlora
from colorgan import Discriminator, Generator, load_checkpoint, save_checkpoint
from colorgan import outputs
from colorgan.checkpoint import SHIPPED_DIR, read_checkpoint_config
from colorgan.cli import describe_error, main
from colorgan.data.folder import ImageFolder, load_image
from colorgan.train.continual import TrainConfig, train
from colorgan.train.loop import TrainingDiverged, lock_folder
from colorgan.train.pretrain import PretrainConfig, RunOptions, pretrain
from fastlora import AdapterConfig
from fastlora.functional import NonFiniteInput, modulated_conv2d
from fastlora.io import find_interrupted, sha256_file
from tests.helpers import write_random_images

CH = {4: 16, 8: 16, 16: 8}
OPTS = RunOptions(progress=False, device="cpu")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny base checkpoint with a discriminator, and two task folders."""
    root = tmp_path_factory.mktemp("safety")
    torch.manual_seed(0)
    ckpt = save_checkpoint(root / "base", Generator(16, 16, 2, channels=CH), Discriminator(16, channels=CH))
    return {"root": root, "ckpt": ckpt, "a": write_random_images(root / "a", 4, 1),
            "b": write_random_images(root / "b", 4, 2)}


def cfg(base, **kw) -> TrainConfig:
    args = dict(ckpt=str(base["ckpt"]), tasks=f"a={base['a']}", iter=3, batch=2, n_sample=2, sample_every=100,
                save_every=100, log_every=1, d_reg_every=2, g_reg_every=2)
    args.update(kw)
    return TrainConfig(**args)


def tree(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- --overwrite

def test_overwrite_never_removes_the_commands_input(base, tmp_path):
    before = tree(base["ckpt"])
    with pytest.raises((ValueError, FileExistsError), match="input|not a colorgan run folder"):
        train(cfg(base), base["ckpt"], options=OPTS, overwrite=True)  # --out = the base being trained from
    assert tree(base["ckpt"]) == before
    data = write_random_images(tmp_path / "data", 4, 3)
    with pytest.raises((ValueError, FileExistsError)):
        pretrain(PretrainConfig(data=str(data), size=16, iter=1, batch=2, style_dim=16, n_mlp=2, channels=CH), data,
                 options=OPTS, overwrite=True)
    assert len(list(data.iterdir())) == 4
    # a run folder that holds the base (--out = the base's parent) is refused even though it is a run folder
    run = tmp_path / "run"
    train(cfg(base, iter=1), run, options=OPTS)
    inner = save_checkpoint(run / "checkpoints" / "mine", Generator(16, 16, 2, channels=CH),
                            Discriminator(16, channels=CH))
    with pytest.raises(ValueError, match="holds this command's input"):
        train(cfg(base, ckpt=str(inner), iter=1), run, options=OPTS, overwrite=True)
    assert (inner / "base.safetensors").is_file()


def test_overwrite_keeps_a_users_files_and_foreign_folders(base, tmp_path):
    run = tmp_path / "run"
    train(cfg(base, iter=1), run, options=OPTS)
    (run / "notes.txt").write_text("my notes")
    with pytest.raises(FileExistsError, match="notes.txt"):
        train(cfg(base, iter=1), run, options=OPTS, overwrite=True)
    assert (run / "notes.txt").read_text() == "my notes"
    (run / "notes.txt").unlink()
    train(cfg(base, iter=1), run, options=OPTS, overwrite=True)  # an earlier run of colorgan's is replaced
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text("{}")  # a config.json alone does not make it colorgan's
    with pytest.raises(FileExistsError, match="not a colorgan run folder"):
        train(cfg(base, iter=1), mine, options=OPTS, overwrite=True)
    assert main(["convert", "pack", str(base["ckpt"]), "--out", str(mine), "--overwrite"]) == 1
    assert (mine / "config.json").read_text() == "{}"
    # a colorgan checkpoint is not replaced by a run
    with pytest.raises(FileExistsError, match="colorgan checkpoint folder, not a run folder"):
        outputs.check_replaceable(base["ckpt"], "run", ["config.json"])


def test_demo_overwrite_refuses_a_folder_that_merely_holds_data(tmp_path):
    from colorgan.demo import run_demo

    out = tmp_path / "project"
    (out / "data").mkdir(parents=True)
    (out / "data" / "precious.png").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="not a colorgan demo folder"):
        run_demo(out, base=None, pretrain_iter=1, task_iter=1, progress=False, overwrite=True)
    assert (out / "data" / "precious.png").read_bytes() == b"x"


def test_nothing_is_written_inside_the_installed_package(base, tmp_path, monkeypatch):
    for target in (SHIPPED_DIR / "emoji32", ROOT / "colorgan" / "x", ROOT / "fastlora" / "y.onnx"):
        with pytest.raises(PermissionError, match="inside the installed package"):
            outputs.check_writable(target)
    shipped_before = tree(SHIPPED_DIR / "emoji32")
    rc = main(["convert", "pack", str(base["ckpt"]), "--out", str(SHIPPED_DIR / "emoji32"), "--overwrite"])
    assert rc == 1 and tree(SHIPPED_DIR / "emoji32") == shipped_before
    # generate / export / onnx-generate / train into the package are refused before anything is written
    assert main(["generate", "--ckpt", "emoji32", "--task", "base", "--seeds", "0", "--no-progress",
                 "--outdir", str(SHIPPED_DIR / "emoji32")]) == 1
    assert main(["export", "--ckpt", str(base["ckpt"]), "--task", "base",
                 "--out", str(SHIPPED_DIR / "emoji32" / "x.onnx")]) == 1
    assert tree(SHIPPED_DIR / "emoji32") == shipped_before
    with pytest.raises(PermissionError):
        train(cfg(base, iter=1), SHIPPED_DIR / "run", options=OPTS)
    assert not (SHIPPED_DIR / "run").exists()
    # a fake installed package (the real one may be a checkout): its whole folder is off limits
    fake = tmp_path / "site" / "colorgan"
    fake.mkdir(parents=True)
    monkeypatch.setattr(outputs, "package_dirs", lambda: [fake.resolve()])
    with pytest.raises(PermissionError):
        save_checkpoint(fake / "assets" / "base" / "x", Generator(16, 16, 2, channels=CH))
    assert not (fake / "assets").exists()


def test_replacing_files_only_when_colorgan_wrote_them(base, tmp_path):
    out = tmp_path / "imgs"
    (out / "base").mkdir(parents=True)
    (out / "base" / "seed0000.png").write_bytes(b"a user's file")
    assert main(["generate", "--ckpt", str(base["ckpt"]), "--task", "base", "--seeds", "0-1", "--outdir", str(out),
                 "--overwrite", "--no-progress"]) == 1
    assert (out / "base" / "seed0000.png").read_bytes() == b"a user's file"
    (out / "base" / "seed0000.png").unlink()
    assert main(["generate", "--ckpt", str(base["ckpt"]), "--task", "base", "--seeds", "0-1", "--outdir", str(out),
                 "--no-progress"]) == 0
    assert main(["generate", "--ckpt", str(base["ckpt"]), "--task", "base", "--seeds", "0-1", "--outdir", str(out),
                 "--overwrite", "--no-progress"]) == 0  # its own images are replaced


# ----------------------------------------------------------------------------- untrusted strings

def _edit_config(ckpt: Path, fn) -> None:
    cfg_path = ckpt / "config.json"
    c = json.loads(cfg_path.read_text())
    fn(c)
    cfg_path.write_text(json.dumps(c))


def test_task_names_and_folders_read_from_files_are_checked(base, tmp_path):
    G, D, _ = load_checkpoint(base["ckpt"])
    fastlora.add_task(G, "t", AdapterConfig())
    ck = save_checkpoint(tmp_path / "ck", G, D)
    victim = tmp_path / "other" / "tasks" / "x"
    shutil.copytree(ck / "tasks" / "t", victim)
    for bad, msg in ((lambda c: c["tasks"][0].update(dir="../other/tasks/x"), "reads nothing else"),
                     (lambda c: c["tasks"][0].update(name="../x"), "bad task entry"),
                     (lambda c: c["tasks"][0].update(name="/etc"), "bad task entry"),
                     (lambda c: c["tasks"].append(dict(c["tasks"][0])), "listed twice")):
        work = tmp_path / "w"
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(ck, work)
        _edit_config(work, bad)
        with pytest.raises(ValueError, match=msg):
            load_checkpoint(work)
    # an adapter folder whose config names a path as its task
    meta = json.loads((ck / "tasks" / "t" / "adapter_config.json").read_text())
    meta["task"] = "../../escape"
    (victim / "adapter_config.json").write_text(json.dumps(meta))
    G2, _, _ = load_checkpoint(ck, tasks=[])
    with pytest.raises(ValueError, match="task names must be"):
        fastlora.load_task(G2, victim)


def test_onnx_metadata_cannot_send_images_outside_outdir(base, tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from export import export_checkpoint
    from export.render import render_onnx

    (res,) = export_checkpoint(base["ckpt"], "base", tmp_path / "g.onnx", batches=(1,))
    model = onnx.load(res.path)
    for bad in ("../../escaped", str(tmp_path / "abs"), "a/b"):
        for p in model.metadata_props:
            if p.key == "colorgan.task":
                p.value = bad
        f = tmp_path / "evil.onnx"
        onnx.save(model, str(f))
        with pytest.raises(ValueError, match="not usable as a folder"):
            render_onnx(f, "0", tmp_path / "out", overwrite=True)
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "abs").exists()


# ----------------------------------------------------------------------------- non-finite values

def test_diverging_run_stops_keeps_last_good_save_and_logs_valid_json(base, tmp_path, capsys):
    run = tmp_path / "run"
    # lr 30 diverges after a few iterations (a few saves exist by then); lr 1e30 in the first
    rc = main(["train", "--ckpt", str(base["ckpt"]), "--tasks", f"a={base['a']}", "--out", str(run), "--iter", "200",
               "--lr", "30", "--batch", "2", "--save-every", "1", "--log-every", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and "training diverged" in err and "--lr" in err and "Traceback" not in err
    lines = (run / "log.jsonl").read_text().splitlines()
    for line in lines:
        json.loads(line, parse_constant=lambda c: pytest.fail(f"log.jsonl holds {c}"))
    assert "diverged" in json.loads(lines[-1])
    G, _, _ = load_checkpoint(run / "checkpoint")  # the last save before the divergence, finite
    assert all(torch.isfinite(t).all() for t in G.state_dict().values() if t.is_floating_point())
    with pytest.raises(TrainingDiverged):
        train(cfg(base, iter=50, lr=1e30), tmp_path / "r2", options=OPTS)


def test_non_finite_weights_are_refused_by_generate_and_export(base, tmp_path):
    G, D, _ = load_checkpoint(base["ckpt"])
    fastlora.add_task(G, "t", AdapterConfig())
    ck = save_checkpoint(tmp_path / "ck", G, D)
    f = ck / "tasks" / "t" / "adapter.safetensors"
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(f))
    k = next(iter(tensors))
    tensors[k] = torch.full_like(tensors[k], float("nan"))
    save_file(tensors, str(f))
    meta = json.loads((f.parent / "adapter_config.json").read_text())
    meta["file_sha256"] = sha256_file(f)
    (f.parent / "adapter_config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="NaN or infinite"):
        load_checkpoint(ck)
    assert main(["generate", "--ckpt", str(ck), "--task", "t", "--seeds", "0", "--outdir", str(tmp_path / "o"),
                 "--no-progress"]) == 1
    assert not (tmp_path / "o").exists()
    from export import export_generator

    Gn, _, _ = load_checkpoint(base["ckpt"])
    with torch.no_grad():
        next(Gn.parameters()).fill_(float("inf"))
    with pytest.raises(ValueError, match="NaN or infinite"):
        export_generator(Gn, None, tmp_path / "x.onnx", batches=(1,))
    with pytest.raises(ValueError, match="NaN or infinite"):
        save_checkpoint(tmp_path / "nan", Gn)


def test_ops_refuse_nan_inputs_and_even_kernels():
    x, s = torch.randn(2, 4, 8, 8), torch.randn(2, 4)
    with pytest.raises(ValueError, match="odd k"):
        modulated_conv2d(x, torch.randn(5, 4, 4, 4), s)
    x[1, 2, 3, 4] = float("nan")
    with pytest.raises(NonFiniteInput, match="x holds NaN"):
        modulated_conv2d(x, torch.randn(5, 4, 3, 3), s)
    with pytest.raises(NonFiniteInput, match="x holds NaN"):
        fastlora.functional.linear(torch.tensor([[float("inf"), 1.0]]), torch.randn(3, 2))


def test_base_without_checksum_is_refused(base, tmp_path):
    ck = tmp_path / "ck"
    shutil.copytree(base["ckpt"], ck)
    _edit_config(ck, lambda c: c["base"].pop("sha256"))
    with pytest.raises(ValueError, match="no checksum"):
        load_checkpoint(ck)
    load_checkpoint(ck, verify=False)  # an explicit opt-out stays possible


# ----------------------------------------------------------------------------- images

def _png(path: Path, arr: np.ndarray, color_type: int, depth: int) -> Path:
    """A PNG written byte by byte (Pillow cannot write 16-bit RGB)."""
    h = arr.shape[0]
    raw = b"".join(b"\x00" + arr[y].astype(">u2" if depth == 16 else "u1").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", arr.shape[1], h, depth, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


def test_images_of_every_common_mode_load_as_they_look(tmp_path):
    grey16 = (np.arange(64).reshape(8, 8) * 1000).astype(np.uint16)
    expect = np.round(grey16 / 257).astype(np.uint8)
    a = load_image(_png(tmp_path / "g16.png", grey16, 0, 16))
    assert np.abs(a[..., 0].astype(int) - expect).max() <= 1 and (a[..., 0] == a[..., 2]).all()
    rgb16 = np.stack([grey16, grey16 // 2, 65535 - grey16], -1)
    b = load_image(_png(tmp_path / "rgb16.png", rgb16, 2, 16))
    assert np.abs(b.astype(int) - (rgb16 >> 8)).max() <= 1
    base = np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(base).convert("P", palette=Image.Palette.ADAPTIVE, colors=256).save(tmp_path / "p.png")
    assert np.abs(load_image(tmp_path / "p.png").astype(int) - base).mean() < 20
    la = Image.fromarray(np.stack([grey16 >> 8, np.full((8, 8), 255)], -1).astype(np.uint8), "LA")
    la.save(tmp_path / "la.png")
    assert (load_image(tmp_path / "la.png")[..., 0] == (grey16 >> 8)).all()
    Image.fromarray(base).convert("CMYK").save(tmp_path / "c.jpg", quality=100)
    assert np.abs(load_image(tmp_path / "c.jpg").astype(int) - base).mean() < 20


def test_unreadable_files_in_a_training_folder_are_named(tmp_path):
    folder = write_random_images(tmp_path / "d", 3, 0)
    (folder / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png"):
        ImageFolder(folder, 16)


# ----------------------------------------------------------------------------- the CLI: one line, no traceback

def test_cli_errors_are_one_line(base, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc = main(["generate", "--ckpt", str(base["ckpt"]), "--task", "base", "--seeds", "0",
               "--outdir", str(blocker / "sub"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and "Not a directory" in err and "Traceback" not in err
    assert "disk is full" in describe_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/x/y"))
    assert "/x/y" in describe_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/x/y"))
    assert main(["eval", "--ckpt", str(base["ckpt"]), "--real", str(base["a"]), "--n", "0",
                 "--inception", str(blocker)]) == 1
    assert "at least 2" in capsys.readouterr().err
    lp = tmp_path / "lpips.pt"
    torch.save({"args": argparse_namespace()}, lp)  # pickled Python objects, not only tensors
    rc = main(["train", "--ckpt", str(base["ckpt"]), "--tasks", f"a={base['a']}", "--out", str(tmp_path / "r"),
               "--method", "lfs", "--lpips", str(lp), "--iter", "1", "--batch", "2", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and "pickled Python objects" in err and "Traceback" not in err


def argparse_namespace():
    import argparse

    return argparse.Namespace(lr=0.1)


def test_resume_says_which_settings_cannot_change(base, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--ckpt", str(base["ckpt"]), "--tasks", f"a={base['a']}", "--batch", "2", "--no-progress"]
    assert main(args + ["--out", str(run), "--iter", "2"]) == 0
    assert main(["train", "--resume", str(run), "--lr", "0.01", "--no-progress"]) == 1
    assert "--lr cannot be changed" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--iter", "3", "--no-progress"]) == 0  # --iter is honoured
    assert json.loads((run / "config.json").read_text())["iter"] == 3
    assert json.loads((run / "summary.json").read_text())["finished"]
    assert "iter 2 -> 3" in (run / "train.log").read_text()


# ----------------------------------------------------------------------------- interrupted work

def test_leftovers_are_cleaned_and_a_parked_checkpoint_is_found(base, tmp_path):
    run = tmp_path / "run"
    train(cfg(base, iter=2, save_every=1), run, options=OPTS)
    (run / ".checkpoint.abcd1234.tmp").mkdir()
    (run / ".checkpoint.abcd1234.tmp" / "base.safetensors").write_bytes(b"\0" * 1000)
    (run / "state" / ".state.pt.zz_y9876.tmp").write_bytes(b"half")
    # a kill between the two renames of a folder replace: the checkpoint is parked in .checkpoint.*.old/x
    parked = run / ".checkpoint.qwer5678.old"
    parked.mkdir()
    os.replace(run / "checkpoint", parked / "x")
    assert find_interrupted(run / "checkpoint") == parked / "x"
    G, _, info = load_checkpoint(run / "checkpoint")  # readers find it in that window
    assert info["path"] == str(parked / "x") and fastlora.task_names(G) == ["a"]
    train(None, run, options=OPTS, resume=True, changes={"iter": 3})
    names = {p.name for p in run.rglob("*")}
    assert not [n for n in names if n.endswith((".tmp", ".old"))] and (run / "checkpoint" / "config.json").is_file()


def test_two_processes_cannot_train_in_one_run(base, tmp_path):
    run = tmp_path / "run"
    train(cfg(base, iter=1), run, options=OPTS)
    fd = lock_folder(run)  # as if another process were training there
    try:
        with pytest.raises(RuntimeError, match="another colorgan process"):
            train(None, run, options=OPTS, resume=True)
    finally:
        os.close(fd)


def test_written_files_follow_the_umask(base, tmp_path):
    old = os.umask(0o027)
    try:
        ck = save_checkpoint(tmp_path / "ck", load_checkpoint(base["ckpt"])[0])
    finally:
        os.umask(old)
    assert (ck / "base.safetensors").stat().st_mode & 0o777 == 0o640
    assert ck.stat().st_mode & 0o777 == 0o750


@pytest.mark.slow
@pytest.mark.xfail(strict=False, raises=subprocess.TimeoutExpired,
                   reason="known issue: in full-suite runs on a 2-core machine the interrupted child sometimes does "
                          "not exit within 120 s of SIGINT (passes alone); under investigation")
def test_ctrl_c_during_training_exits_130_and_says_how_to_resume(base, tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = tmp_path / "stderr.txt"  # a file, not a pipe: a full pipe would block the child while we poll
    with open(log, "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "colorgan", "train", "--ckpt", str(base["ckpt"]), "--tasks",
                                 f"a={base['a']}", "--out", str(run), "--iter", "100000", "--batch", "2",
                                 "--save-every", "2", "--no-progress", "--backend", "torch",
                                 "--near-anchor", "0"],  # no 1000 Inception passes first where a network is installed
                                env=env, stderr=stderr)
    try:
        deadline = time.time() + 300
        while not (run / "state" / "state.pt").exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert proc.poll() is None and (run / "state" / "state.pt").exists(), \
            f"training did not reach its first save: {log.read_text()[-2000:]}"
        proc.send_signal(signal.SIGUSR1)  # a stack dump on request; training carries on
        deadline = time.time() + 60
        while "most recent call first" not in log.read_text() and time.time() < deadline:
            time.sleep(0.2)
        assert "most recent call first" in log.read_text() and proc.poll() is None, log.read_text()[-2000:]
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:  # the known hang: record where the child is stuck, then fail
            proc.send_signal(signal.SIGUSR1)  # colorgan's stack dump
            time.sleep(5)
            warnings.warn(f"Ctrl-C hang, the child's stacks: {log.read_text()[-6000:]}")
            raise
    finally:
        if proc.poll() is None:
            proc.kill()
    err = log.read_text()
    assert proc.returncode == 130, err
    assert f"--resume {run}" in err and "Traceback" not in err
    assert main(["train", "--resume", str(run), "--iter", "3", "--no-progress"]) == 0
    assert not [p for p in run.rglob("*") if p.name.endswith((".tmp", ".old"))]
    assert read_checkpoint_config(run / "checkpoint")["tasks"][0]["name"] == "a"
