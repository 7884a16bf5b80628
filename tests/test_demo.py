"""colorgan demo (what `make demo` runs), with tiny iteration counts."""
import json

import pytest
import torch

from colorgan.demo import run_demo


def test_demo_end_to_end(tmp_path, capsys):
    n = torch.get_num_threads()
    summary = run_demo(tmp_path / "demo", pretrain_iter=4, task_iter=2, progress=False)
    assert torch.get_num_threads() == n
    out = capsys.readouterr().out
    assert "[5/5] ONNX export" in out and "% of the generator" in out
    assert set(summary["tasks"]) == {"red-circles", "outline-triangles"}
    for info in summary["tasks"].values():
        assert 0 < info["stored_params"] < summary["base_generator_params"] * 0.05
    assert summary["export"]["rel"] < 1e-4 and (tmp_path / "demo" / "red-circles.onnx").is_file()
    assert json.loads((tmp_path / "demo" / "summary.json").read_text())["grid"].endswith("grid.png")
    with pytest.raises(FileExistsError, match="--overwrite"):
        run_demo(tmp_path / "demo", pretrain_iter=4, task_iter=2, progress=False)
    other = tmp_path / "precious"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not a demo folder"):
        run_demo(other, overwrite=True, progress=False)
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
