"""ImageFolder: sorting, alpha on white, resizing, range, errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from colorgan.data.folder import ImageFolder, list_images, load_image


def _write(path, img):
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def test_sorted_recursive_and_extensions(tmp_path):
    _write(tmp_path / "b.png", Image.new("RGB", (8, 8), (255, 0, 0)))
    _write(tmp_path / "a" / "z.jpg", Image.new("RGB", (8, 8), (0, 255, 0)))
    _write(tmp_path / "c.webp", Image.new("RGB", (8, 8), (0, 0, 255)))
    (tmp_path / "notes.txt").write_text("not an image")
    files = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert files == ["a/z.jpg", "b.png", "c.webp"]
    ds = ImageFolder(tmp_path, size=4)
    assert len(ds) == 3
    x = ds[1]
    assert x.shape == (3, 4, 4) and x.dtype == torch.float32
    assert torch.allclose(x[0], torch.ones(4, 4)) and torch.allclose(x[1], -torch.ones(4, 4))


def test_alpha_composited_on_white_and_range(tmp_path):
    img = Image.new("RGBA", (6, 6), (0, 0, 0, 0))
    img.putpixel((0, 0), (0, 0, 0, 255))
    _write(tmp_path / "t.png", img)
    x = ImageFolder(tmp_path)[0]
    assert x.shape == (3, 6, 6)
    assert x[:, 0, 0].tolist() == [-1.0, -1.0, -1.0]  # opaque black stays black
    assert torch.all(x[:, 5, 5] == 1.0)  # transparent becomes white
    assert x.min() >= -1 and x.max() <= 1


def test_resize_antialiased_and_centre_crop(tmp_path):
    # a fine checkerboard averages to mid-grey when downsampled with antialiasing
    arr = (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)
    _write(tmp_path / "c.png", Image.fromarray(arr).convert("RGB"))
    small = load_image(tmp_path / "c.png", 8)
    assert small.shape == (8, 8, 3)
    assert abs(float(small.mean()) - 127.5) < 10 and small.std() < 20
    # non-square: the centre square is kept
    wide = np.zeros((4, 12, 3), np.uint8)
    wide[:, 4:8] = 255
    _write(tmp_path / "w.png", Image.fromarray(wide))
    out = load_image(tmp_path / "w.png", 4)
    assert out.shape == (4, 4, 3) and out.min() > 200


def test_errors_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing-folder"):
        ImageFolder(tmp_path / "missing-folder")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty.*no image"):
        ImageFolder(tmp_path / "empty")
    with pytest.raises(ValueError, match="size"):
        _write(tmp_path / "ok" / "a.png", Image.new("RGB", (4, 4)))
        ImageFolder(tmp_path / "ok", size=0)
