"""colorgan demo (what `make demo` runs), with tiny iteration counts."""
import json
import math

import pytest
import torch

from colorgan.demo import run_demo


def test_demo_end_to_end(tmp_path, capsys):
    n = torch.get_num_threads()
    summary = run_demo(tmp_path / "demo", base=None, pretrain_iter=4, task_iter=2, progress=False)
    assert torch.get_num_threads() == n
    out = capsys.readouterr().out
    assert "[5/5] ONNX export" in out and "% of the generator" in out
    assert set(summary["tasks"]) == {"red-circles", "outline-triangles"}
    for info in summary["tasks"].values():
        assert 0 < info["stored_params"] < summary["base_generator_params"] * 0.05
    assert summary["export"]["rel"] < 1e-4 and (tmp_path / "demo" / "red-circles.onnx").is_file()
    assert json.loads((tmp_path / "demo" / "summary.json").read_text())["grid"].endswith("grid.png")
    with pytest.raises(FileExistsError, match="--overwrite"):
        run_demo(tmp_path / "demo", base=None, pretrain_iter=4, task_iter=2, progress=False)
    other = tmp_path / "precious"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not a colorgan demo folder"):
        run_demo(other, base=None, overwrite=True, progress=False)
    assert (other / "keep.txt").exists()


def test_shipped_demo_task_shots_and_licences():
    from PIL import Image

    from colorgan.data.folder import list_images
    from colorgan.demo import DEMO_TASKS_DIR, demo_task_dirs

    dirs = demo_task_dirs()
    assert set(dirs) == {"twemoji", "openmoji", "flags"}
    for name, folder in dirs.items():
        files = list_images(folder)
        assert len(files) == 10, name
        for f in files:
            with Image.open(f) as im:
                assert im.size == (64, 64) and im.mode == "RGB"
    text = (DEMO_TASKS_DIR / "LICENSES.md").read_text()
    for needle in ("CC-BY-4.0", "CC-BY-SA-4.0", "Apache-2.0", "OFL-1.1", "Twitter", "OpenMoji", "Google"):
        assert needle in text


def test_demo_on_a_given_base_with_scores(tmp_path, tiny_net_path):
    from colorgan import Discriminator, Generator, save_checkpoint
    from tests.helpers import write_random_images

    net = tiny_net_path
    ch = {4: 16, 8: 16, 16: 8}
    base = save_checkpoint(tmp_path / "base", Generator(16, 16, 2, channels=ch), Discriminator(16, channels=ch))
    for i, task in enumerate(("twemoji", "openmoji", "flags")):
        write_random_images(tmp_path / "data" / task / "full", 8, seed=i)
    summary = run_demo(tmp_path / "demo", base=base, real=tmp_path / "data", inception=net, n_eval=6, task_iter=2,
                       progress=False)
    assert set(summary["tasks"]) == {"twemoji", "openmoji", "flags"}
    for info in summary["tasks"].values():
        assert all(math.isfinite(info[k]) for k in ("fid", "kid", "base_fid", "base_kid"))
    assert summary["base"] == str(base)
    with pytest.raises(FileNotFoundError, match="checkpoint folder"):
        run_demo(tmp_path / "demo2", base=tmp_path / "nope", progress=False)
    assert not (tmp_path / "demo2").exists()


def test_default_real_finds_the_full_sets(tmp_path, monkeypatch):
    from colorgan.demo import default_real, demo_task_dirs

    monkeypatch.delenv("COLORGAN_EMOJI_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    assert default_real() is None
    for t in demo_task_dirs():
        (tmp_path / "data" / "emoji32" / t / "full").mkdir(parents=True)
    assert default_real() == "data/emoji32"
    monkeypatch.setenv("COLORGAN_EMOJI_DATA", "/elsewhere")
    assert default_real() == "/elsewhere"
