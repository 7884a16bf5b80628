"""Emoji benchmark builder on a tiny fake source tree (a few emoji, fake PNGs and SVGs)."""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from colorgan.data import emoji as E

NOTO = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
DEJAVU = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")

# (unified, name, category, subcategory): BMP symbols that both Noto Color Emoji and DejaVu Sans draw
SYMBOLS = [
    ("263A-FE0F", "WHITE SMILING FACE", "Smileys & Emotion", "face-affection"),
    ("2665-FE0F", "BLACK HEART SUIT", "Activities", "game"),
    ("2660-FE0F", "BLACK SPADE SUIT", "Activities", "game"),
    ("2663-FE0F", "BLACK CLUB SUIT", "Activities", "game"),
    ("2666-FE0F", "BLACK DIAMOND SUIT", "Activities", "game"),
    ("2600-FE0F", "BLACK SUN WITH RAYS", "Animals & Nature", "animal-mammal"),
    ("2601-FE0F", "CLOUD", "Animals & Nature", "animal-bird"),
    ("2602-FE0F", "UMBRELLA", "Travel & Places", "sky & weather"),
    ("2603-FE0F", "SNOWMAN", "Flags", "flag"),
    ("260E-FE0F", "BLACK TELEPHONE", "Flags", "flag"),
    ("2614", "UMBRELLA WITH RAIN DROPS", "Flags", "flag"),
    ("2615", "HOT BEVERAGE", "Flags", "flag"),
    ("2744-FE0F", "SNOWFLAKE", "Flags", "flag"),
    ("2708-FE0F", "AIRPLANE", "Flags", "flag"),
]
# rename two to animal "faces" so the animal-faces subset has members
FACE_NAMES = {"2600-FE0F": "SUN FACE", "2601-FE0F": "CLOUD FACE"}
SHOTS = 3
# Fluent Emoji file stems in the fake tree -> the emoji they draw (names slugged; an emoji with skin tones has its
# untoned image as "-default" and its toned ones with the tone's name)
FLUENT = {"white-smiling-face-default": "263a-fe0f", "white-smiling-face-light": "263a-1f3fb",
          "black-heart-suit": "2665-fe0f", "black-spade-suit": "2660-fe0f", "cloud-face": "2601-fe0f",
          "umbrella": "2602-fe0f", "snowman": "2603-fe0f"}
FLUENT_STEMS = list(FLUENT)
# High Contrast has no skin tones: one black line drawing per emoji, toned or not ("-default" where Fluent tones it)
FLUENT_CONTRAST = {"white-smiling-face-default": "263a-fe0f", "black-heart-suit": "2665-fe0f",
                   "umbrella": "2602-fe0f"}
# EmojiOne 2 PNG file stems (lower-case codepoints without FE0F) in the fake tree; "0023" is no emoji in the metadata
EMOJIONE = ["263a", "263a-1f3fb", "2665", "2660", "2601", "2614", "0023"]
DUPLICATE = "2663-FE0F"  # its Twemoji image repeats the one before it (2660, which sorts first)


def _mpl_dejavu() -> Path:
    """DejaVu Sans as matplotlib (a dev dependency) ships it: present wherever `make test` installed the project."""
    try:
        import matplotlib
    except ImportError:
        return Path("/nonexistent")
    return Path(matplotlib.__file__).parent / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"


def _font() -> Path:
    for f in (NOTO, DEJAVU, _mpl_dejavu()):
        if f.is_file():
            return f
    pytest.skip(f"no test font: neither {NOTO} (apt-get install fonts-noto-color-emoji), {DEJAVU} nor matplotlib's "
                f"DejaVu Sans is installed")


def _has_svg() -> bool:
    try:
        E.SvgRasteriser()
        return True
    except FileNotFoundError:
        return False


def _make_tree(root: Path) -> Path:
    """A fake node_modules with emoji-datasource-twitter and openmoji."""
    nm = root / "node_modules"
    ds = nm / E.TWEMOJI_PKG
    (ds / "img" / "twitter" / "64").mkdir(parents=True)
    (ds / "package.json").write_text(json.dumps({"name": E.TWEMOJI_PKG, "version": "0.0.1-test"}))
    om = nm / E.OPENMOJI_PKG
    (om / "data").mkdir(parents=True)
    (om / "color" / "svg").mkdir(parents=True)
    (om / "black" / "svg").mkdir(parents=True)
    (om / "package.json").write_text(json.dumps({"name": E.OPENMOJI_PKG, "version": "0.0.2-test"}))
    records, om_records = [], []
    rng = np.random.default_rng(123)
    entries = SYMBOLS + [("E000", "PRIVATE USE", "Symbols", "other-symbol"),  # no font has it: dropped
                         ("2B50", "WHITE MEDIUM STAR", "Component", "skin-tone")]  # component: left out
    for i, (uni, name, cat, sub) in enumerate(entries):
        img = uni.lower() + ".png"
        has = uni != "2615"  # one emoji without a Twemoji image
        records.append({"name": FACE_NAMES.get(uni, name), "unified": uni, "image": img, "short_name": name.lower().replace(" ", "_"),
                        "category": cat, "subcategory": sub, "has_img_twitter": has})
        if has:
            if uni != DUPLICATE:  # DUPLICATE's Twemoji image is the previous emoji's: deduplicated away
                arr = np.zeros((64, 64, 4), np.uint8)
                arr[8:56, 8:56, :3] = rng.integers(0, 255, 3)
                arr[8:56, 8:56, 3] = 255
            Image.fromarray(arr, "RGBA").save(ds / "img" / "twitter" / "64" / img)
        if i % 4 != 3:  # some emoji have no OpenMoji
            hexcode = uni
            om_records.append({"hexcode": hexcode, "group": "x", "subgroups": "y"})
            colour = "#%02x%02x%02x" % tuple(int(c) for c in rng.integers(0, 255, 3))
            (om / "color" / "svg" / f"{hexcode}.svg").write_text(
                f'<svg viewBox="0 0 72 72" xmlns="http://www.w3.org/2000/svg">'
                f'<circle cx="36" cy="36" r="{10 + i}" fill="{colour}" stroke="#000" stroke-width="2"/></svg>')
            (om / "black" / "svg" / f"{hexcode}.svg").write_text(
                f'<svg viewBox="0 0 72 72" xmlns="http://www.w3.org/2000/svg">'
                f'<circle cx="36" cy="36" r="{10 + i}" fill="none" stroke="#000" stroke-width="2"/></svg>')
    # a skin-tone variant on the first record
    records[0]["skin_variations"] = {"1F3FB": {"unified": "263A-1F3FB", "image": "263a-1f3fb.png", "has_img_twitter": False}}
    (ds / "emoji.json").write_text(json.dumps(records))
    (om / "data" / "openmoji.json").write_text(json.dumps(om_records))
    fl = nm / E.FLUENT_PKG
    (fl / "icons" / "flat").mkdir(parents=True)
    (fl / "package.json").write_text(json.dumps({"name": E.FLUENT_PKG, "version": "0.0.3-test"}))
    for i, stem in enumerate(FLUENT_STEMS + ["not-an-emoji"]):
        colour = "#%02x%02x%02x" % tuple(int(c) for c in rng.integers(0, 255, 3))
        (fl / "icons" / "flat" / f"{stem}.svg").write_text(
            f'<svg viewBox="0 0 32 32" xmlns="http://www.w3.org/2000/svg">'
            f'<rect x="{4 + i % 5}" y="6" width="20" height="{12 + i}" fill="{colour}"/></svg>')
    (fl / "icons" / "high-contrast").mkdir()
    for i, stem in enumerate(FLUENT_CONTRAST):
        (fl / "icons" / "high-contrast" / f"{stem}.svg").write_text(
            f'<svg viewBox="0 0 32 32" xmlns="http://www.w3.org/2000/svg">'
            f'<circle cx="16" cy="16" r="{6 + 3 * i}" fill="none" stroke="#212121" stroke-width="2"/></svg>')
    eo = nm / E.EMOJIONE_PKG
    (eo / "assets" / "png_128x128").mkdir(parents=True)
    (eo / "package.json").write_text(json.dumps({"name": E.EMOJIONE_PKG, "version": "2.2.7"}))
    for i, stem in enumerate(EMOJIONE):
        arr = np.zeros((128, 128, 4), np.uint8)
        arr[20 + i: 100, 16:110, :3] = rng.integers(0, 255, 3)
        arr[20 + i: 100, 16:110, 3] = 255
        Image.fromarray(arr, "RGBA").save(eo / "assets" / "png_128x128" / f"{stem}.png")
    return nm


def _tree_bytes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _tasks() -> list[str]:
    svg = ["openmoji", "openmoji-black", "fluent", "fluent-contrast"] if _has_svg() else []
    return ["twemoji", "emojione", "animal-faces", "flags"] + svg


@pytest.fixture
def tree(tmp_path):
    return _make_tree(tmp_path / "npm")


def test_build_tiny_tree(tmp_path, tree):
    font = _font()
    out = tmp_path / "bench"
    m = E.build_emoji_benchmark(out, 32, shots=SHOTS, npm_dir=tree, noto_font=font, tasks=_tasks(), progress=False)
    src = sorted(p.stem for p in (out / "source").iterdir())
    # every font-drawn symbol is in the source, the private-use and component entries are not
    assert "e000" not in src and "2b50" not in src
    assert {u.lower() for u, *_ in SYMBOLS} <= set(src)
    assert m["source"]["n"] == len(src)
    # twemoji: all present emoji that have a Twemoji image
    tw = sorted(p.stem for p in (out / "twemoji" / "full").iterdir())
    assert "2615" not in tw and "263a-1f3fb" not in tw and len(tw) == m["tasks"]["twemoji"]["n_full"]
    # identical renderings are kept once: the duplicate's Twemoji image is gone, its Noto rendering is not
    assert DUPLICATE.lower() not in tw and m["tasks"]["twemoji"]["n_duplicates_removed"] == 1
    assert DUPLICATE.lower() in src
    assert m["tasks"]["twemoji"]["kind"] == "near-style" and m["tasks"]["flags"]["kind"] == "subset"
    # (the autouse fixture widens animal-faces to the category plus names ending in FACE)
    faces = sorted(p.stem for p in (out / "animal-faces" / "full").iterdir())
    assert faces == [i for i in src if i in {"2600-fe0f", "2601-fe0f", "263a-fe0f", "263a-1f3fb"}]
    flags = sorted(p.stem for p in (out / "flags" / "full").iterdir())
    assert flags == sorted(u.lower() for u, _, c, _ in SYMBOLS if c == "Flags")
    for t, info in m["tasks"].items():
        train = sorted(p.name for p in (out / t / "train").iterdir())
        full = {p.name for p in (out / t / "full").iterdir()}
        assert len(train) == SHOTS == info["n_train"] and set(train) <= full
        assert [n[:-4] for n in train] == info["train_ids"]
    for p in (out / "flags" / "full").iterdir():
        with Image.open(p) as im:
            assert im.mode == "RGB" and im.size == (32, 32)
            arr = np.asarray(im)
            assert (arr[0, 0] == 255).all()  # composited on white with a margin
            assert arr.min() < 200  # something was drawn
    man = json.loads((out / "manifest.json").read_text())
    assert man["seed"] == 0 and man["size"] == 32 and man["sources"]["twemoji"]["version"] == "0.0.1-test"
    assert "CC-BY-4.0" in man["sources"]["twemoji"]["licence"] and "OFL-1.1" in man["sources"]["noto"]["licence"]
    assert "Twemoji" in (out / "LICENSES.md").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bench")]  # temp folder gone


@pytest.fixture(autouse=True)
def _two_animal_faces_need_fewer_shots(monkeypatch):
    # the fake tree has only 2 animal faces: widen the subset to the whole category for SHOTS=3
    monkeypatch.setitem(E.TASKS, "animal-faces", E.TaskSpec(
        "animal-faces", "subset", "test", "noto", lambda e: e.category == "Animals & Nature" or e.name.endswith("FACE")))


def test_reproducible_and_seeded(tmp_path, tree):
    font = _font()
    kw = dict(shots=SHOTS, npm_dir=tree, noto_font=font, tasks=_tasks(), progress=False)
    E.build_emoji_benchmark(tmp_path / "a", 32, **kw)
    E.build_emoji_benchmark(tmp_path / "b", 32, **kw)
    assert _tree_bytes(tmp_path / "a") == _tree_bytes(tmp_path / "b")
    m2 = E.build_emoji_benchmark(tmp_path / "c", 32, seed=5, **kw)
    m1 = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert m1["tasks"]["flags"]["train_ids"] != m2["tasks"]["flags"]["train_ids"]
    assert m1["source"]["sha256"] == m2["source"]["sha256"]


def test_overwrite_rules(tmp_path, tree):
    font = _font()
    out = tmp_path / "bench"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    kw = dict(shots=SHOTS, npm_dir=tree, noto_font=font, tasks=["flags"], progress=False)
    with pytest.raises(FileExistsError, match="--overwrite"):
        E.build_emoji_benchmark(out, 32, **kw)
    assert (out / "keep.txt").exists()
    with pytest.raises(FileExistsError, match="not a colorgan data folder"):  # --overwrite never takes a user's folder
        E.build_emoji_benchmark(out, 32, overwrite=True, **kw)
    assert (out / "keep.txt").read_text() == "x"
    (out / "keep.txt").unlink()
    E.build_emoji_benchmark(out, 32, **kw)
    first = (out / "manifest.json").read_bytes()
    E.build_emoji_benchmark(out, 32, overwrite=True, seed=1, **kw)  # an earlier build is replaced
    assert (out / "flags" / "train").is_dir() and (out / "manifest.json").read_bytes() != first
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="notes.txt"):
        E.build_emoji_benchmark(out, 32, overwrite=True, **kw)
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench", "npm"]


def test_missing_sources_say_what_to_install(tmp_path, tree):
    with pytest.raises(FileNotFoundError, match="apt-get install fonts-noto-color-emoji"):
        E.build_emoji_benchmark(tmp_path / "o", 32, npm_dir=tree, noto_font=tmp_path / "nope.ttf", progress=False)
    font = _font()
    with pytest.raises(FileNotFoundError, match=r"npm install --prefix .* emoji-datasource-twitter openmoji "
                                                r"fluentui-emoji emojione@2\.2\.7"):
        E.build_emoji_benchmark(tmp_path / "o", 32, npm_dir=tmp_path / "empty", noto_font=font, progress=False)
    with pytest.raises(ValueError, match="size must be 32, 64 or 128"):
        E.build_emoji_benchmark(tmp_path / "o", 48, npm_dir=tree, noto_font=font)
    with pytest.raises(ValueError, match="unknown task"):
        E.build_emoji_benchmark(tmp_path / "o", 32, npm_dir=tree, noto_font=font, tasks=["sketches"])
    assert not (tmp_path / "o").exists()


def test_choose_shots():
    ids = [f"{i:04x}" for i in range(40)]
    a = E.choose_shots(list(reversed(ids)), 10, 0, "flags")
    assert a == sorted(a) and len(set(a)) == 10 and set(a) <= set(ids)
    assert a == E.choose_shots(ids, 10, 0, "flags")
    assert a != E.choose_shots(ids, 10, 1, "flags")
    assert a != E.choose_shots(ids, 10, 0, "twemoji")
    with pytest.raises(ValueError, match="fewer than"):
        E.choose_shots(ids[:3], 10, 0, "flags")


def test_metadata_and_match_key(tree):
    em = E.load_emoji_metadata(tree / E.TWEMOJI_PKG)
    ids = [e.id for e in em]
    assert ids == sorted(ids) and "2b50" not in ids and "263a-1f3fb" in ids
    variant = next(e for e in em if e.id == "263a-1f3fb")
    assert variant.category == "Smileys & Emotion" and variant.twemoji_image is None
    assert E.match_key("1f636-200d-1f32b-fe0f") == "1F636-200D-1F32B"
    assert sorted(e.id for e in em if E.is_animal_face(e)) == ["2600-fe0f", "2601-fe0f"]
    assert sorted(e.id for e in em if E.is_flag(e)) == sorted(u.lower() for u, _, c, _ in SYMBOLS if c == "Flags")


def test_hands_task_members():
    """`hands` takes the People & Body subcategories hand-* and hands, and nothing else of that category."""
    def emoji(category: str, subcategory: str) -> E.Emoji:
        return E.Emoji("1f44d", "1F44D", "X", "x", category, subcategory, None)

    member = E.TASKS["hands"].member
    assert member(emoji("People & Body", "hand-fingers-open")) and member(emoji("People & Body", "hands"))
    assert not member(emoji("People & Body", "person-role")) and not member(emoji("People & Body", "body-parts"))
    assert not member(emoji("Objects", "hand-tool"))  # a hand- subcategory of another category
    assert E.TASKS["hands"].kind == "subset" and E.TASKS["hands"].role == "validation"


def test_finish_image_centres_on_white():
    rgba = Image.new("RGBA", (120, 70), (0, 0, 0, 0))
    rgba.paste((255, 0, 0, 255), (60, 10, 100, 30))  # 40 x 20 content, off-centre
    out = np.asarray(E.finish_image(rgba, 32))
    assert out.shape == (32, 32, 3)
    red = (out[..., 0] > 200) & (out[..., 1] < 80)
    ys, xs = np.nonzero(red)
    assert abs(ys.mean() - 15.5) < 0.6 and abs(xs.mean() - 15.5) < 0.6  # centred
    assert 0 < xs.min() <= 2 and 29 <= xs.max() < 31  # longer edge fills the canvas less the margin
    assert (out[0] == 255).all()
    assert E.finish_image(Image.new("RGBA", (8, 8)), 32) is None


@pytest.mark.skipif(not NOTO.is_file(), reason="Noto Color Emoji not installed (apt-get install fonts-noto-color-emoji)")
def test_real_noto_font_renders_colour():
    r = E.FontRenderer(NOTO)
    img = r.render("\U0001F600")
    assert img is not None
    arr = np.asarray(img)
    opaque = arr[arr[..., 3] > 200][:, :3].astype(int)
    assert len(opaque) > 1000 and (opaque[:, 0] - opaque[:, 2]).mean() > 50  # yellow-ish, i.e. colour glyphs
    assert r.render("\ue000") is None  # not in the font
    assert r.render("\U0001F600\U0001F600") is None  # two glyphs are not one emoji


def test_cli_data_emoji(tmp_path, tree, capsys):
    font = _font()
    from colorgan.commands import data

    p = argparse.ArgumentParser()
    data.register(p.add_subparsers(dest="command"))
    args = p.parse_args(["data", "emoji", "--out", str(tmp_path / "cli"), "--size", "32", "--shots", str(SHOTS),
                         "--npm-dir", str(tree), "--noto-font", str(font), "--tasks", "flags", "--no-progress"])
    assert args.func(args) == 0
    assert "flags" in capsys.readouterr().out
    assert len(list((tmp_path / "cli" / "flags" / "train").iterdir())) == SHOTS


def test_far_style_and_validation_tasks(tmp_path, tree):
    """OpenMoji's black line art (when an SVG rasteriser is installed) and Symbola's glyphs (any monochrome font
    stands in for Symbola here: matplotlib's DejaVu Sans), with their kinds and roles in the manifest."""
    font = _font()
    tasks = ["symbola"] + (["openmoji-black"] if _has_svg() else [])
    m = E.build_emoji_benchmark(tmp_path / "b", 32, shots=SHOTS, npm_dir=tree, noto_font=font,
                                symbola_font=_mpl_dejavu() if _mpl_dejavu().is_file() else DEJAVU, tasks=tasks,
                                progress=False)
    assert m["tasks"]["symbola"]["kind"] == "far-style" and m["tasks"]["symbola"]["role"] == "validation"
    for t in tasks:
        for p in (tmp_path / "b" / t / "full").iterdir():
            arr = np.asarray(Image.open(p))
            assert (arr[0, 0] == 255).all() and arr.min() < 100  # drawn dark on white
            assert np.abs(arr[..., 0].astype(int) - arr[..., 2]).max() < 40  # black line art or glyphs: no colour
    assert "symbola" in m["sources"] and "Symbola" in (tmp_path / "b" / "LICENSES.md").read_text()
    with pytest.raises(FileNotFoundError, match="apt-get install fonts-symbola"):
        E.build_emoji_benchmark(tmp_path / "c", 32, npm_dir=tree, noto_font=font, tasks=["symbola"],
                                symbola_font=tmp_path / "none.ttf", progress=False)


def test_fluent_matches_names_and_tones(tree):
    """Fluent Emoji files are named by emoji name: the untoned emoji takes `<name>` or `<name>-default`, a toned
    one `<name>-<tone>`; two different tones in one emoji, or no such file, give none."""
    index = E.fluent_index(tree / E.FLUENT_PKG)
    assert set(index) == set(FLUENT) | {"not-an-emoji"}
    em = {e.id: e for e in E.load_emoji_metadata(tree / E.TWEMOJI_PKG)}
    assert {i: E.fluent_svg(e, index).stem for i, e in em.items() if E.fluent_svg(e, index)} == \
        {v: k for k, v in FLUENT.items()}
    two_tones = dataclasses.replace(em["263a-fe0f"], unified="263A-1F3FB-200D-263A-1F3FF")
    assert E.fluent_svg(two_tones, index) is None
    with pytest.raises(FileNotFoundError, match="fluentui-emoji"):
        E.fluent_index(tree / E.TWEMOJI_PKG)
    contrast = E.fluent_index(tree / E.FLUENT_PKG, "high-contrast")
    assert {i: E.fluent_svg(e, contrast).stem for i, e in em.items() if E.fluent_svg(e, contrast)} == \
        {v: k for k, v in FLUENT_CONTRAST.items()}
    assert E.fluent_svg(em["263a-1f3fb"], contrast) is None  # toned: High Contrast draws no tones


def _build_fluent(tmp_path: Path, tree: Path, task: str, kind: str, stems: dict, shots: int) -> list:
    """Build one Fluent Emoji task from the fake tree, check what both share (kind, role, licence, exactly the
    drawn emoji the source has, white corners) and return its full set as int arrays."""
    m = E.build_emoji_benchmark(tmp_path / "b", 32, shots=shots, npm_dir=tree, noto_font=_font(), tasks=[task],
                                progress=False)
    info = m["tasks"][task]
    assert info["kind"] == kind and info["role"] == "validation" and info["licence"] == "MIT"
    src = {p.stem for p in (tmp_path / "b" / "source").iterdir()}
    full = sorted(p.stem for p in (tmp_path / "b" / task / "full").iterdir())
    assert full == sorted(i for i in stems.values() if i in src) and info["n_full"] == len(full) >= 2
    arrs = [np.asarray(Image.open(tmp_path / "b" / task / "full" / f"{stem}.png")).astype(int) for stem in full]
    for arr in arrs:
        assert arr.shape == (32, 32, 3) and (arr[0, 0] == 255).all()
    assert m["sources"]["fluent"]["version"] == "0.0.3-test"
    assert f"{task}/" in (tmp_path / "b" / "LICENSES.md").read_text()
    return arrs


@pytest.mark.skipif(not _has_svg(), reason="no SVG rasteriser (pip install cairosvg, or apt-get install "
                                           "librsvg2-bin)")
def test_fluent_near_style_validation_task(tmp_path, tree):
    arrs = _build_fluent(tmp_path, tree, "fluent", "near-style", FLUENT, SHOTS)
    assert all(arr.min() < 250 for arr in arrs)
    assert "Fluent Emoji" in (tmp_path / "b" / "LICENSES.md").read_text()


@pytest.mark.skipif(not _has_svg(), reason="no SVG rasteriser (pip install cairosvg, or apt-get install "
                                           "librsvg2-bin)")
def test_fluent_contrast_far_style_validation_task(tmp_path, tree):
    """fluent-contrast renders Fluent Emoji's High Contrast SVGs (black line art), not the flat colour ones."""
    for arr in _build_fluent(tmp_path, tree, "fluent-contrast", "far-style", FLUENT_CONTRAST, 2):
        assert arr.min() < 100
        assert (np.ptp(arr, axis=2) < 8).all()  # grey: black strokes on white, none of the flat set's colours


def test_emojione_near_style_validation_task(tmp_path, tree):
    """emojione: EmojiOne 2's PNGs matched by codepoints (without FE0F, skin tones included), a near-style
    validation task under its own licence; another major version of the package is refused before anything is
    written."""
    m = E.build_emoji_benchmark(tmp_path / "b", 32, shots=SHOTS, npm_dir=tree, noto_font=_font(), tasks=["emojione"],
                                progress=False)
    info = m["tasks"]["emojione"]
    assert (info["kind"], info["role"]) == ("near-style", "validation") and "CC-BY" in info["licence"]
    src = {p.stem for p in (tmp_path / "b" / "source").iterdir()}
    full = sorted(p.stem for p in (tmp_path / "b" / "emojione" / "full").iterdir())
    drawn = {"263a-fe0f", "263a-1f3fb", "2665-fe0f", "2660-fe0f", "2601-fe0f", "2614"}
    assert full == sorted(drawn & src) and info["n_full"] == len(full) >= SHOTS
    for stem in full:
        arr = np.asarray(Image.open(tmp_path / "b" / "emojione" / "full" / f"{stem}.png")).astype(int)
        assert arr.shape == (32, 32, 3) and (arr[0, 0] == 255).all() and arr.min() < 250
    assert m["sources"]["emojione"]["version"] == "2.2.7"
    assert "EmojiOne" in (tmp_path / "b" / "LICENSES.md").read_text()
    (tree / E.EMOJIONE_PKG / "package.json").write_text(json.dumps({"name": E.EMOJIONE_PKG, "version": "4.5.0"}))
    with pytest.raises(FileNotFoundError, match=r"found version '4\.5\.0'.*emojione@2\.2\.7"):
        E.build_emoji_benchmark(tmp_path / "c", 32, shots=SHOTS, npm_dir=tree, noto_font=_font(),
                                tasks=["emojione"], progress=False)
    assert not (tmp_path / "c").exists()
