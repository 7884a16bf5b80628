"""The emoji few-shot benchmark (SPEC §7), built from locally installed packages only.

Sources (nothing is downloaded at run time):
- Noto Color Emoji font, Debian `fonts-noto-color-emoji` (font OFL-1.1, artwork Apache-2.0), rendered with Pillow;
- Twemoji 64x64 PNGs and the emoji metadata (codepoints, categories) from npm `emoji-datasource-twitter`;
- OpenMoji SVGs from npm `openmoji`, rasterised with CairoSVG (or `rsvg-convert`).

Layout written under OUT:
    source/<id>.png              Noto renderings of every emoji the font has (the source domain)
    <task>/train/<id>.png        10 shots chosen with a fixed seed
    <task>/full/<id>.png         the whole task set (FID/KID reference; includes the shots)
    manifest.json, LICENSES.md
`<id>` is the lower-case codepoint sequence, e.g. `1f600` or `1f44d-1f3fd`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shutil
import struct
import subprocess
import zlib
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from colorgan.data.folder import list_images
from colorgan.outputs import check_replaceable, check_writable, write_marker
from fastlora.io import atomic_directory, sha256_file

NOTO_FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf",
    "/usr/share/fonts/noto/NotoColorEmoji.ttf",
    "/usr/share/fonts/google-noto-emoji/NotoColorEmoji.ttf",
)
MISSING_CHAR = "\U0010FFFF"
NOTO_BITMAP_SIZE = 109  # the only size FreeType accepts for this CBDT bitmap font
NPM_PREFIX_HINT = "~/.cache/colorgan/npm"
TWEMOJI_PKG = "emoji-datasource-twitter"
OPENMOJI_PKG = "openmoji"
MANIFEST_VERSION = 1
DEFAULT_SEED = 0
DEFAULT_SHOTS = 10
MARGIN = 0.04  # empty border, as a fraction of the square canvas, around each cropped emoji

INSTALL_NOTO = "apt-get install fonts-noto-color-emoji"
INSTALL_NPM = f"npm install --prefix {NPM_PREFIX_HINT} {TWEMOJI_PKG} {OPENMOJI_PKG}"
INSTALL_SVG = "pip install cairosvg  (needs the cairo library: apt-get install libcairo2), or apt-get install librsvg2-bin"

LICENCES = {
    "noto": {
        "package": "Debian fonts-noto-color-emoji",
        "licence": "OFL-1.1 (font file); emoji artwork Apache-2.0",
        "attribution": "Noto Color Emoji, Copyright 2013-2017 Google Inc. (https://github.com/googlefonts/noto-emoji). "
                       "Font under the SIL Open Font License 1.1; emoji artwork under the Apache License 2.0.",
    },
    "twemoji": {
        "package": f"npm {TWEMOJI_PKG}",
        "licence": "CC-BY-4.0 (graphics); emoji-datasource metadata MIT",
        "attribution": "Twemoji graphics Copyright Twitter, Inc and other contributors, licensed under CC-BY 4.0 "
                       "(https://creativecommons.org/licenses/by/4.0/). Images and metadata via emoji-datasource "
                       "(Copyright Cal Henderson, MIT licence). Images were cropped, padded, composited on white and resized.",
    },
    "openmoji": {
        "package": f"npm {OPENMOJI_PKG}",
        "licence": "CC-BY-SA-4.0",
        "attribution": "All emojis designed by OpenMoji - the open-source emoji and icon project. "
                       "License: CC BY-SA 4.0 (https://creativecommons.org/licenses/by-sa/4.0/). "
                       "SVGs were rasterised, cropped, padded, composited on white and resized; the derived images "
                       "are shared under the same licence.",
    },
}


# --------------------------------------------------------------------------- metadata


@dataclasses.dataclass(frozen=True)
class Emoji:
    """One emoji (base or skin-tone variant) from the emoji-datasource metadata."""

    id: str  # lower-case codepoints joined by '-', used as the file name
    unified: str  # upper-case codepoints as in the metadata
    name: str
    short_name: str
    category: str
    subcategory: str
    twemoji_image: str | None  # file name under img/twitter/64, None if no Twemoji image

    @property
    def text(self) -> str:
        return "".join(chr(int(cp, 16)) for cp in self.unified.split("-"))

    @property
    def key(self) -> str:
        """Codepoints without variation selector 16, for matching across sources."""
        return match_key(self.unified)


def match_key(hexcode: str) -> str:
    """Normalise a codepoint sequence ('1F636-200D-1F32B-FE0F') for cross-source matching."""
    return "-".join(cp for cp in hexcode.upper().split("-") if cp and cp != "FE0F")


def _npm_search_dirs(npm_dir: str | os.PathLike | None) -> list[Path]:
    if npm_dir is not None:
        return [Path(npm_dir).expanduser()]
    dirs = [Path.cwd() / "node_modules"]
    if os.environ.get("COLORGAN_NPM_DIR"):
        dirs.append(Path(os.environ["COLORGAN_NPM_DIR"]).expanduser())
    dirs.append(Path(NPM_PREFIX_HINT).expanduser() / "node_modules")
    return dirs


def find_npm_package(name: str, npm_dir: str | os.PathLike | None = None) -> Path:
    """Locate an installed npm package folder (one holding package.json).

    `npm_dir` is a `node_modules` folder; without it ./node_modules, $COLORGAN_NPM_DIR and
    ~/.cache/colorgan/npm/node_modules are searched. Raises FileNotFoundError saying what to install.
    """
    tried = []
    for d in _npm_search_dirs(npm_dir):
        # accept both the node_modules folder and its parent (the npm --prefix)
        for cand in (d / name, d / "node_modules" / name):
            tried.append(str(cand))
            if (cand / "package.json").is_file():
                return cand
    raise FileNotFoundError(
        f"npm package {name!r} not found (looked in: {', '.join(tried)}). Install it with "
        f"`{INSTALL_NPM}` or pass --npm-dir pointing at the node_modules folder that holds it."
    )


def package_version(pkg_dir: Path) -> str:
    """The `version` field of an npm package's package.json."""
    return str(json.loads((pkg_dir / "package.json").read_text(encoding="utf-8")).get("version", "unknown"))


def load_emoji_metadata(datasource_dir: Path) -> list[Emoji]:
    """Base emoji and skin-tone variants from emoji-datasource's emoji.json, sorted by id.

    The 'Component' category (bare skin-tone swatches, hair components) is left out.
    """
    path = Path(datasource_dir) / "emoji.json"
    if not path.is_file():
        raise FileNotFoundError(f"expected emoji metadata at {str(path)!r} (from npm {TWEMOJI_PKG}); not found")
    records = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(records, list):
        raise ValueError(f"{str(path)!r}: expected a JSON list of emoji records, got {type(records).__name__}")
    out: dict[str, Emoji] = {}
    for r in records:
        try:
            cat, sub, name = r["category"], r.get("subcategory", ""), r.get("name") or ""
            short = r.get("short_name") or ""
            variants = [r] + list((r.get("skin_variations") or {}).values())
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{str(path)!r}: emoji record without {exc} field: {r!r:.200}") from exc
        if cat == "Component":
            continue
        for v in variants:
            unified = str(v["unified"]).upper()
            img = v.get("image") if v.get("has_img_twitter", True) else None
            e = Emoji(id=unified.lower(), unified=unified, name=name, short_name=short,
                      category=cat, subcategory=sub, twemoji_image=img)
            out.setdefault(e.id, e)
    return [out[k] for k in sorted(out)]


# --------------------------------------------------------------------------- rendering


def finish_image(rgba: Image.Image, size: int, margin: float = MARGIN, alpha_threshold: int = 8) -> Image.Image | None:
    """Crop to the visible content, centre on a square canvas with `margin`, composite on white and resize
    with LANCZOS to `size`. Returns None for an image with no visible pixel."""
    rgba = rgba.convert("RGBA")
    mask = rgba.getchannel("A").point(lambda a: 255 if a > alpha_threshold else 0)
    bbox = mask.getbbox()
    if bbox is None:
        return None
    content = rgba.crop(bbox)
    w, h = content.size
    pad = int(round(max(w, h) * margin / (1.0 - 2.0 * margin)))
    side = max(w, h) + 2 * pad  # the same border on both sides of the longer edge
    canvas = Image.new("RGBA", (side, side), (255, 255, 255, 255))
    canvas.alpha_composite(content, ((side - w) // 2, (side - h) // 2))
    rgb = canvas.convert("RGB")
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.LANCZOS)
    return rgb


def find_noto_font(path: str | os.PathLike | None = None) -> Path:
    """Locate NotoColorEmoji.ttf; raises FileNotFoundError saying how to install it."""
    cands = [Path(path).expanduser()] if path is not None else [Path(p) for p in NOTO_FONT_CANDIDATES]
    for c in cands:
        if c.is_file():
            return c
    raise FileNotFoundError(
        f"Noto Color Emoji font not found (looked at: {', '.join(map(str, cands))}). Install it with "
        f"`{INSTALL_NOTO}` (Debian/Ubuntu) or pass --noto-font PATH to a NotoColorEmoji.ttf."
    )


class NotoRenderer:
    """Render emoji sequences with a colour bitmap font through Pillow (raqm layout when available)."""

    def __init__(self, font_path: Path, font_size: int = NOTO_BITMAP_SIZE) -> None:
        from PIL import features

        self.font_path = Path(font_path)
        self.layout = "raqm" if features.check("raqm") else "basic"
        engine = ImageFont.Layout.RAQM if self.layout == "raqm" else ImageFont.Layout.BASIC
        try:
            self.font = ImageFont.truetype(str(self.font_path), font_size, layout_engine=engine)
        except OSError as exc:
            raise ValueError(f"cannot open {str(self.font_path)!r} at size {font_size} with FreeType "
                             f"(colour bitmap fonts such as Noto Color Emoji only accept size {NOTO_BITMAP_SIZE}): {exc}") from exc
        self.advance = self.font.getlength("\U0001F600") or float(font_size)
        # what the font draws for a character it lacks (its .notdef glyph, e.g. a box): U+10FFFF is a
        # noncharacter, in no font
        self._missing = self._draw(MISSING_CHAR)

    def _draw(self, text: str) -> Image.Image | None:
        left, top, right, bottom = self.font.getbbox(text)
        if right <= left or bottom <= top:
            return None
        pad = 8
        img = Image.new("RGBA", (int(right - left) + 2 * pad, int(bottom - top) + 2 * pad), (0, 0, 0, 0))
        # black ink: colour fonts use their own colours, a monochrome font stays visible on the white background
        ImageDraw.Draw(img).text((pad - left, pad - top), text, font=self.font, embedded_color=True, fill="black")
        return img

    def render(self, text: str) -> Image.Image | None:
        """RGBA rendering of `text`, or None when the font shows it as more than one glyph, as nothing, or as
        its missing-glyph symbol."""
        length = self.font.getlength(text)
        if length <= 0 or length > 1.5 * self.advance:
            return None  # not shaped into a single glyph: the font lacks this sequence
        img = self._draw(text)
        if img is None or (self._missing is not None and img.size == self._missing.size
                           and img.tobytes() == self._missing.tobytes()):
            return None
        return img


class SvgRasteriser:
    """SVG -> RGBA via CairoSVG when importable, else the `rsvg-convert` command."""

    def __init__(self) -> None:
        try:
            import cairosvg  # noqa: F401

            self.backend = "cairosvg " + getattr(cairosvg, "__version__", "?")
            self._cairosvg = cairosvg
        except (ImportError, OSError):
            self._cairosvg = None
            exe = shutil.which("rsvg-convert")
            if exe is None:
                raise FileNotFoundError(f"no SVG rasteriser available for OpenMoji: {INSTALL_SVG}") from None
            self._exe = exe
            ver = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.strip()
            self.backend = ver or "rsvg-convert"

    def render(self, svg_path: Path, px: int) -> Image.Image:
        if self._cairosvg is not None:
            data = self._cairosvg.svg2png(url=str(svg_path), output_width=px, output_height=px)
        else:
            data = subprocess.run([self._exe, "-w", str(px), "-h", str(px), str(svg_path)],
                                  capture_output=True, check=True).stdout
        with Image.open(io.BytesIO(data)) as im:
            return im.convert("RGBA")


def _ttf_version_string(path: Path) -> str:
    """The font's name-table version string (name id 5), or 'unknown'."""
    try:
        data = path.read_bytes()
        num_tables = struct.unpack(">H", data[4:6])[0]
        for i in range(num_tables):
            tag, _, off, _ = struct.unpack(">4sIII", data[12 + 16 * i: 28 + 16 * i])
            if tag != b"name":
                continue
            _, count, str_off = struct.unpack(">HHH", data[off: off + 6])
            for j in range(count):
                pid, eid, _, nid, ln, so = struct.unpack(">HHHHHH", data[off + 6 + 12 * j: off + 18 + 12 * j])
                if nid == 5 and pid == 3 and eid in (0, 1, 10):
                    start = off + str_off + so
                    return data[start: start + ln].decode("utf-16-be")
    except (OSError, struct.error, UnicodeDecodeError):
        pass
    return "unknown"


def _debian_version(pkg: str) -> str | None:
    if shutil.which("dpkg-query") is None:
        return None
    r = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", pkg], capture_output=True, text=True)
    return r.stdout.strip() or None if r.returncode == 0 else None


# --------------------------------------------------------------------------- tasks


def is_animal_face(e: Emoji) -> bool:
    """Animal heads: 'cat-face' subcategory, or an animal-* subcategory whose Unicode name ends in FACE."""
    return e.subcategory == "cat-face" or (e.subcategory.startswith("animal-") and e.name.upper().endswith(" FACE"))


def is_flag(e: Emoji) -> bool:
    """Every emoji in the 'Flags' category (country, subdivision and other flags)."""
    return e.category == "Flags"


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: str  # "style" or "subset"
    description: str
    style: str  # "twemoji" | "openmoji" | "noto"
    member: Callable[[Emoji], bool] | None = None


TASKS: dict[str, TaskSpec] = {
    "twemoji": TaskSpec("twemoji", "style", "the source emoji in Twemoji style", "twemoji"),
    "openmoji": TaskSpec("openmoji", "style", "the source emoji in OpenMoji style", "openmoji"),
    "animal-faces": TaskSpec("animal-faces", "subset",
                             "Noto animal faces: subcategory cat-face, or animal-* with a Unicode name ending in FACE",
                             "noto", is_animal_face),
    "flags": TaskSpec("flags", "subset", "Noto flags: category Flags", "noto", is_flag),
}
# what `colorgan data emoji` writes in its folder (--overwrite replaces a data folder holding nothing else)
DATA_ENTRIES = ("source", "manifest.json", "LICENSES.md", *TASKS)


def choose_shots(ids: list[str], shots: int, seed: int, task: str) -> list[str]:
    """`shots` ids drawn without replacement from the sorted ids with numpy.random.default_rng([seed, crc32(task)]),
    returned sorted."""
    ids = sorted(ids)
    if len(ids) < shots:
        raise ValueError(f"task {task!r} has {len(ids)} images, fewer than the {shots} shots asked for")
    rng = np.random.default_rng([seed, zlib.crc32(task.encode("utf-8"))])
    picked = rng.choice(len(ids), size=shots, replace=False)
    return sorted(ids[i] for i in picked)


def _save_png(img: Image.Image, path: Path) -> None:
    # no pnginfo/exif: Pillow then writes no time chunk, so bytes depend only on the pixels
    img.save(path, format="PNG", optimize=False, compress_level=9)


def _tree_sha256(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.iterdir()):
        h.update(p.name.encode("utf-8") + b"\0" + hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def _progress(it: Iterable, desc: str, total: int, enabled: bool) -> Iterable:
    if not enabled:
        return it
    from tqdm import tqdm

    return tqdm(it, desc=desc, total=total, unit="img", leave=False)


# --------------------------------------------------------------------------- builder


def build_emoji_benchmark(
    out: str | os.PathLike,
    size: int = 64,
    *,
    seed: int = DEFAULT_SEED,
    shots: int = DEFAULT_SHOTS,
    tasks: Iterable[str] | None = None,
    npm_dir: str | os.PathLike | None = None,
    noto_font: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Build the emoji benchmark into `out` and return the manifest.

    Everything is written to a temporary sibling folder first and renamed into place at the end.
    Raises FileExistsError if `out` exists and is not empty (unless `overwrite`), FileNotFoundError naming
    the package to install when a source is missing, ValueError for bad arguments.
    """
    if size not in (32, 64, 128):
        raise ValueError(f"size must be 32, 64 or 128, got {size!r}")
    if shots < 1:
        raise ValueError(f"shots must be >= 1, got {shots}")
    task_names = list(TASKS) if tasks is None else list(dict.fromkeys(tasks))
    unknown = [t for t in task_names if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; expected some of {sorted(TASKS)}")
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"output folder {str(out)!r} exists and is not empty; pass overwrite=True (CLI: --overwrite) to replace it")

    def replaceable(folder: Path) -> None:
        check_replaceable(folder, "data", DATA_ENTRIES, inputs=[npm_dir, noto_font])

    check_writable(out, "data folder")
    if out.exists() and overwrite:
        replaceable(out)

    # locate every source before doing any work
    font_path = find_noto_font(noto_font)
    ds_dir = find_npm_package(TWEMOJI_PKG, npm_dir)
    styles = {TASKS[t].style for t in task_names}
    om_dir = find_npm_package(OPENMOJI_PKG, npm_dir) if "openmoji" in styles else None
    rasteriser = SvgRasteriser() if om_dir is not None else None
    emoji = load_emoji_metadata(ds_dir)
    noto = NotoRenderer(font_path)

    with atomic_directory(out, overwrite=True, check_replace=replaceable) as tmp:
        write_marker(tmp, "data")
        # source domain: every emoji the font renders as one glyph
        src_dir = tmp / "source"
        src_dir.mkdir()
        present: list[Emoji] = []
        for e in _progress(emoji, "noto", len(emoji), progress):
            rgba = noto.render(e.text)
            img = finish_image(rgba, size) if rgba is not None else None
            if img is None:
                continue
            _save_png(img, src_dir / f"{e.id}.png")
            present.append(e)
        if not present:
            raise ValueError(f"the font {str(font_path)!r} rendered none of the {len(emoji)} emoji; is it a colour emoji font?")

        task_info: dict[str, dict] = {}
        for t in task_names:
            spec = TASKS[t]
            full_dir = tmp / t / "full"
            full_dir.mkdir(parents=True)
            ids: list[str] = []
            if spec.style == "noto":
                for e in present:
                    if spec.member is not None and spec.member(e):
                        shutil.copyfile(src_dir / f"{e.id}.png", full_dir / f"{e.id}.png")
                        ids.append(e.id)
            elif spec.style == "twemoji":
                img_dir = ds_dir / "img" / "twitter" / "64"
                if not img_dir.is_dir():
                    raise FileNotFoundError(f"expected Twemoji PNGs in {str(img_dir)!r}; reinstall with `{INSTALL_NPM}`")
                for e in _progress(present, t, len(present), progress):
                    if not e.twemoji_image or not (img_dir / e.twemoji_image).is_file():
                        continue
                    with Image.open(img_dir / e.twemoji_image) as im:
                        img = finish_image(im.convert("RGBA"), size)
                    if img is not None:
                        _save_png(img, full_dir / f"{e.id}.png")
                        ids.append(e.id)
            elif spec.style == "openmoji":
                assert om_dir is not None and rasteriser is not None
                svgs = _openmoji_index(om_dir)
                px = max(72, 2 * size)
                for e in _progress(present, t, len(present), progress):
                    svg = svgs.get(e.key)
                    if svg is None:
                        continue
                    img = finish_image(rasteriser.render(svg, px), size)
                    if img is not None:
                        _save_png(img, full_dir / f"{e.id}.png")
                        ids.append(e.id)
            if len(ids) < shots:
                raise ValueError(f"task {t!r}: only {len(ids)} images were made, fewer than {shots} shots")
            train = choose_shots(ids, shots, seed, t)
            train_dir = tmp / t / "train"
            train_dir.mkdir()
            for i in train:
                shutil.copyfile(full_dir / f"{i}.png", train_dir / f"{i}.png")
            task_info[t] = {
                "kind": spec.kind, "style": spec.style, "description": spec.description,
                "n_full": len(ids), "n_train": len(train), "train_ids": train,
                "full_sha256": _tree_sha256(full_dir), "train_sha256": _tree_sha256(train_dir),
                "licence": LICENCES[spec.style]["licence"],
            }

        sources = {
            "noto": {**LICENCES["noto"], "font_file": font_path.name, "font_sha256": sha256_file(font_path),
                     "font_version": _ttf_version_string(font_path),
                     "debian_version": _debian_version("fonts-noto-color-emoji"),
                     "render_size": NOTO_BITMAP_SIZE, "layout_engine": noto.layout},
            "twemoji": {**LICENCES["twemoji"], "version": package_version(ds_dir)},
        }
        if om_dir is not None and rasteriser is not None:
            sources["openmoji"] = {**LICENCES["openmoji"], "version": package_version(om_dir),
                                   "svg_rasteriser": rasteriser.backend}
        import PIL

        manifest = {
            "format": "colorgan-emoji-benchmark", "manifest_version": MANIFEST_VERSION,
            "size": size, "seed": seed, "shots": shots, "margin": MARGIN,
            "shot_selection": "numpy.random.default_rng([seed, zlib.crc32(task)]).choice over sorted ids, no replacement",
            "n_metadata_emoji": len(emoji),
            "source": {"n": len(present), "style": "noto", "sha256": _tree_sha256(src_dir), "licence": LICENCES["noto"]["licence"]},
            "tasks": task_info,
            "sources": sources,
            "software": {"pillow": PIL.__version__},
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        (tmp / "LICENSES.md").write_text(_licences_md(manifest), encoding="utf-8")
    return manifest


def _openmoji_index(om_dir: Path) -> dict[str, Path]:
    """match_key -> colour SVG path, from data/openmoji.json and color/svg/."""
    meta = om_dir / "data" / "openmoji.json"
    svg_dir = om_dir / "color" / "svg"
    if not meta.is_file() or not svg_dir.is_dir():
        raise FileNotFoundError(f"expected {str(meta)!r} and {str(svg_dir)!r} in the openmoji package; "
                                f"reinstall with `{INSTALL_NPM}`")
    index: dict[str, Path] = {}
    for r in json.loads(meta.read_text(encoding="utf-8")):
        hexcode = str(r.get("hexcode", ""))
        svg = svg_dir / f"{hexcode}.svg"
        if hexcode and svg.is_file():
            index.setdefault(match_key(hexcode), svg)
    return index


def _licences_md(m: dict) -> str:
    lines = ["# Licences and attribution for this emoji benchmark", "",
             "Generated by `colorgan data emoji`. Each folder keeps the licence of the artwork it was made from.", ""]
    names = {"noto": "Noto Color Emoji (folders source/ and the subset tasks)",
             "twemoji": "Twemoji (folder twemoji/)", "openmoji": "OpenMoji (folder openmoji/)"}
    for key, info in m["sources"].items():
        lines += [f"## {names[key]}", "", f"- from: {info['package']}",
                  f"- version: {info.get('version') or info.get('debian_version') or info.get('font_version')}",
                  f"- licence: {info['licence']}", "", info["attribution"], ""]
    return "\n".join(lines)


def read_manifest(root: str | os.PathLike) -> dict:
    """Load `root/manifest.json` of a built benchmark."""
    p = Path(root) / "manifest.json"
    if not p.is_file():
        raise FileNotFoundError(f"expected a benchmark manifest at {str(p)!r}; build one with `colorgan data emoji --out {root}`")
    return json.loads(p.read_text(encoding="utf-8"))


def task_folders(root: str | os.PathLike, task: str) -> tuple[Path, Path]:
    """(train, full) folders of `task` in a built benchmark, checked to hold images."""
    root = Path(root)
    train, full = root / task / "train", root / task / "full"
    list_images(train)
    list_images(full)
    return train, full
