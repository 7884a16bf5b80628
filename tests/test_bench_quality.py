"""python -m bench quality: adapt a base with each configuration, score against the base, check forgetting."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from bench import quality
from colorgan import Discriminator, Generator, save_checkpoint
from tests.helpers import write_random_images


def test_quality_bench_end_to_end(tmp_path, tiny_net_path):
    torch.manual_seed(0)
    ch = {4: 16, 8: 16, 16: 8}
    base = save_checkpoint(tmp_path / "base", Generator(16, 16, 2, channels=ch), Discriminator(16, channels=ch))
    write_random_images(tmp_path / "data" / "source", 6, 0)
    for i, task in enumerate(("twemoji", "openmoji", "flags")):
        write_random_images(tmp_path / "data" / task / "full", 6, i + 1)
    report = quality.run_bench(str(base), str(tmp_path / "data"), ["default", "left"], iters=2, n=5, n_source=4,
                               runs=tmp_path / "runs", inception=str(tiny_net_path), progress=False,
                               out_dir=str(tmp_path / "res"))
    assert list(report["configs"]) == ["default", "left"]
    for c in report["configs"].values():
        assert set(c["scores"]) == {"twemoji", "openmoji", "flags"}
        assert all(math.isfinite(s["fid"]) and math.isfinite(s["kid"]) for s in c["scores"].values())
        assert c["forgetting_max_abs_pixel_diff"] == {"twemoji": 0.0, "openmoji": 0.0, "flags": 0.0}
        assert 0 < min(c["stored_params"].values()) < c["generator_params"]
    assert report["configs"]["left"]["stored_params"] != report["configs"]["default"]["stored_params"]
    saved = json.loads((tmp_path / "res").glob("*-quality.json").__next__().read_text())
    assert saved["configs"]["default"]["scores"] == report["configs"]["default"]["scores"]
    md = (tmp_path / "res").glob("*-quality.md").__next__().read_text()
    assert "| twemoji |" in md and "published" not in md
    # finished runs are reused; a run with other settings in the same folder is refused
    again = quality.run_bench(str(base), str(tmp_path / "data"), ["default"], iters=2, n=5, n_source=4,
                              runs=tmp_path / "runs", inception=str(tiny_net_path), progress=False,
                              out_dir=str(tmp_path / "res2"))
    assert again["configs"]["default"]["scores"] == report["configs"]["default"]["scores"]
    with pytest.raises(SystemExit, match="another configuration"):
        quality.run_bench(str(base), str(tmp_path / "data"), ["default"], iters=3, n=5, n_source=4,
                          runs=tmp_path / "runs", inception=str(tiny_net_path), progress=False,
                          out_dir=str(tmp_path / "res3"))
    with pytest.raises(SystemExit, match="refusing to overwrite"):
        quality.run_bench(str(base), str(tmp_path / "data"), ["default"], iters=2, n=5, n_source=4,
                          runs=tmp_path / "runs", inception=str(tiny_net_path), progress=False,
                          out_dir=str(tmp_path / "res"))


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


def test_quality_cli_checks_its_options(tmp_path, capsys):
    with pytest.raises(SystemExit):
        quality.main(["--real", str(tmp_path), "--configs", "default,nope", "--inception", "x"])
    assert "--configs must name" in capsys.readouterr().err
