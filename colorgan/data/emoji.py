"""The emoji few-shot benchmark, built from locally installed packages only (design.md §8).

The source domain is Noto Color Emoji; every task is a domain to adapt to from ten shots:

| kind | what a task is | tasks (role) |
|---|---|---|
| far-style | the same content drawn in a very different style | openmoji-black (test), symbola, fluent-contrast (validation) |
| subset | a narrow group of the source's own emoji | flags, symbols, smileys (test), objects, travel and hands (validation), animal-faces (extra, too small for FID) |
| near-style | the same content drawn by other designers | twemoji, openmoji (test: "does no damage" checks), fluent, emojione (validation) |

Validation tasks are for choosing the training recipe, so the test tasks are never looked at for that.
Every set is deduplicated (identical renderings at the target size are kept once, the first by id).

Layout written under OUT:
    source/<id>.png              Noto renderings of every emoji the font has (the source domain)
    <task>/train/<id>.png        the shots, chosen with a fixed seed
    <task>/full/<id>.png         the whole task set (FID/KID reference; includes the shots)
    manifest.json, LICENSES.md
`<id>` is the lower-case codepoint sequence, e.g. `1f600` or `1f44d-1f3fd`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import zlib
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np
import PIL
from PIL import Image

from colorgan.data.emoji_sources import (EMOJIONE_PKG, FLUENT_PKG, FLUENT_VARIANTS, INSTALL_NPM, LICENCES, MARGIN,
                                         NOTO_BITMAP_SIZE, OPENMOJI_PKG, SYMBOLA_SIZE, TWEMOJI_PKG, Emoji, FontRenderer,
                                         SvgRasteriser,
                                         _debian_version, _ttf_version_string, emojione_index, find_noto_font,
                                         find_npm_package,
                                         find_symbola_font, finish_image, fluent_index, fluent_svg,
                                         load_emoji_metadata, match_key, openmoji_index, package_version)
from colorgan.data.folder import images_sha256, list_images
from colorgan.outputs import check_replaceable, check_writable, write_marker
from fastlora.io import atomic_directory, sha256_file

__all__ = ["TASKS", "TaskSpec", "build_emoji_benchmark", "choose_shots", "read_manifest", "task_folders",
           "Emoji", "FontRenderer", "SvgRasteriser", "finish_image", "load_emoji_metadata", "match_key",
           "emojione_index", "fluent_index", "fluent_svg", "EMOJIONE_PKG", "FLUENT_PKG", "OPENMOJI_PKG",
           "TWEMOJI_PKG"]

MANIFEST_VERSION = 2
DEFAULT_SEED = 0
DEFAULT_SHOTS = 10
KINDS = ("far-style", "subset", "near-style")
ROLES = ("test", "validation", "extra")


# --------------------------------------------------------------------------- tasks


def is_animal_face(e: Emoji) -> bool:
    """Animal heads: 'cat-face' subcategory, or an animal-* subcategory whose Unicode name ends in FACE."""
    return e.subcategory == "cat-face" or (e.subcategory.startswith("animal-") and e.name.upper().endswith(" FACE"))


def is_flag(e: Emoji) -> bool:
    """Every emoji in the 'Flags' category (country, subdivision and other flags)."""
    return e.category == "Flags"


def is_hand(e: Emoji) -> bool:
    """Hands: the People & Body subcategories hand-* and hands (one kind of content, as flags are)."""
    return e.category == "People & Body" and (e.subcategory == "hands" or e.subcategory.startswith("hand-"))


def in_category(category: str) -> Callable[[Emoji], bool]:
    def member(e: Emoji) -> bool:
        return e.category == category

    member.__doc__ = f"Every emoji in the {category!r} category."
    return member


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: str  # one of KINDS
    description: str
    style: str  # "noto" (a subset of the source), "twemoji", "emojione", "symbola" or one of SVG_STYLES
    member: Callable[[Emoji], bool] | None = None  # subsets: which source emoji belong
    role: str = "test"  # one of ROLES


TASKS: dict[str, TaskSpec] = {t.name: t for t in (
    TaskSpec("openmoji-black", "far-style", "the source emoji as OpenMoji's black line art", "openmoji-black"),
    TaskSpec("flags", "subset", "Noto flags: category Flags", "noto", is_flag),
    TaskSpec("symbols", "subset", "Noto symbols: category Symbols", "noto", in_category("Symbols")),
    TaskSpec("smileys", "subset", "Noto smileys: category Smileys & Emotion", "noto", in_category("Smileys & Emotion")),
    TaskSpec("twemoji", "near-style", "the source emoji in Twemoji style", "twemoji"),
    TaskSpec("openmoji", "near-style", "the source emoji in OpenMoji's colour style", "openmoji"),
    TaskSpec("symbola", "far-style", "the source emoji as Symbola's black glyphs", "symbola", role="validation"),
    TaskSpec("objects", "subset", "Noto objects: category Objects", "noto", in_category("Objects"), role="validation"),
    TaskSpec("travel", "subset", "Noto travel: category Travel & Places", "noto", in_category("Travel & Places"),
             role="validation"),
    TaskSpec("hands", "subset", "Noto hands: People & Body subcategories hand-* and hands", "noto", is_hand,
             role="validation"),
    TaskSpec("fluent", "near-style", "the source emoji in Microsoft's Fluent Emoji flat style", "fluent",
             role="validation"),
    TaskSpec("fluent-contrast", "far-style", "the source emoji as Fluent Emoji's High Contrast black line art",
             "fluent-contrast", role="validation"),
    TaskSpec("emojione", "near-style", "the source emoji in EmojiOne 2's style", "emojione", role="validation"),
    TaskSpec("animal-faces", "subset",
             "Noto animal faces: subcategory cat-face, or animal-* with a Unicode name ending in FACE",
             "noto", is_animal_face, role="extra"),
)}
SVG_STYLES = ("openmoji", "openmoji-black", *FLUENT_VARIANTS)  # styles rasterised from SVG files
# a style drawn from another style's package (key of LICENCES and Sources); every other style is its own
_STYLE_SOURCE = {"openmoji-black": "openmoji", **dict.fromkeys(FLUENT_VARIANTS, "fluent")}
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


# --------------------------------------------------------------------------- writing


def _save_png(img: Image.Image, path: Path) -> None:
    # no pnginfo/exif: Pillow then writes no time chunk, so bytes depend only on the pixels
    img.save(path, format="PNG", optimize=False, compress_level=9)


def _progress(it: Iterable, desc: str, total: int, enabled: bool) -> Iterable:
    if not enabled:
        return it
    from tqdm import tqdm

    return tqdm(it, desc=desc, total=total, unit="img", leave=False)


class DedupWriter:
    """Writes a set's images as `<id>.png`, keeping each distinct rendering once (the first by id)."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.ids, self.duplicates = folder, [], 0
        self._seen: set[bytes] = set()
        folder.mkdir(parents=True)

    def add(self, eid: str, img: Optional[Image.Image]) -> None:
        if img is None:
            return
        digest = hashlib.sha256(img.tobytes()).digest()
        if digest in self._seen:
            self.duplicates += 1
            return
        self._seen.add(digest)
        _save_png(img, self.folder / f"{eid}.png")
        self.ids.append(eid)


# --------------------------------------------------------------------------- sources


@dataclasses.dataclass
class Sources:
    """Everything the requested tasks need, located before any work is done."""

    noto: FontRenderer
    noto_path: Path
    datasource: Path
    emoji: list
    openmoji: Optional[Path] = None
    fluent: Optional[Path] = None
    emojione: Optional[dict[str, Path]] = None  # match_key -> PNG
    emojione_dir: Optional[Path] = None
    rasteriser: Optional[SvgRasteriser] = None
    symbola: Optional[FontRenderer] = None
    symbola_path: Optional[Path] = None


def locate_sources(task_names: list[str], npm_dir, noto_font, symbola_font) -> Sources:
    styles = {TASKS[t].style for t in task_names}
    noto_path = find_noto_font(noto_font)
    ds_dir = find_npm_package(TWEMOJI_PKG, npm_dir)
    src = Sources(noto=FontRenderer(noto_path), noto_path=noto_path, datasource=ds_dir,
                  emoji=load_emoji_metadata(ds_dir))
    sources = {_source_of(s) for s in styles}
    if "openmoji" in sources:
        src.openmoji = find_npm_package(OPENMOJI_PKG, npm_dir)
    if "fluent" in sources:
        src.fluent = find_npm_package(FLUENT_PKG, npm_dir)
    if "emojione" in sources:
        src.emojione_dir = find_npm_package(EMOJIONE_PKG, npm_dir)
        src.emojione = emojione_index(src.emojione_dir)
    if styles & set(SVG_STYLES):
        src.rasteriser = SvgRasteriser()
    if "symbola" in styles:
        src.symbola_path = find_symbola_font(symbola_font)
        src.symbola = FontRenderer(src.symbola_path, SYMBOLA_SIZE)
    return src


def _svg_lookup(style: str, src: Sources) -> Callable[[Emoji], Optional[Path]]:
    """emoji -> its SVG in one of the SVG_STYLES (None when that style does not draw it)."""
    if style in FLUENT_VARIANTS:
        index = fluent_index(src.fluent, FLUENT_VARIANTS[style])
        return lambda e: fluent_svg(e, index)
    svgs = openmoji_index(src.openmoji, "black" if style == "openmoji-black" else "color")
    return lambda e: svgs.get(e.key)


def _render_style(spec: TaskSpec, present: list[Emoji], src: Sources, size: int, out: DedupWriter,
                  source_dir: Path, progress: bool) -> None:
    """Write the task's full set: a subset copies the source's renderings, a style renders every present emoji."""
    if spec.style == "noto":
        for e in present:
            if spec.member is not None and spec.member(e):
                with Image.open(source_dir / f"{e.id}.png") as im:
                    out.add(e.id, im.convert("RGB"))
        return
    items = _progress(present, spec.name, len(present), progress)
    if spec.style == "twemoji":
        img_dir = src.datasource / "img" / "twitter" / "64"
        if not img_dir.is_dir():
            raise FileNotFoundError(f"expected Twemoji PNGs in {str(img_dir)!r}; reinstall with `{INSTALL_NPM}`")
        _add_pngs(items, lambda e: img_dir / e.twemoji_image if e.twemoji_image else None, size, out)
    elif spec.style == "emojione":
        _add_pngs(items, lambda e: src.emojione.get(e.key), size, out)
    elif spec.style in SVG_STYLES:
        svg_of = _svg_lookup(spec.style, src)
        px = max(72, 2 * size)  # rasterised at this size before cropping
        for e in items:
            svg = svg_of(e)
            if svg is not None:
                out.add(e.id, finish_image(src.rasteriser.render(svg, px), size))
    elif spec.style == "symbola":
        for e in items:
            rgba = src.symbola.render(e.text)
            out.add(e.id, finish_image(rgba, size) if rgba is not None else None)
    else:
        raise ValueError(f"task {spec.name!r}: unknown style {spec.style!r}")


def _add_pngs(items: Iterable[Emoji], png_of: Callable[[Emoji], Optional[Path]], size: int,
              out: DedupWriter) -> None:
    """Add every emoji whose PNG exists (`png_of`: its path or None), finished like every other image."""
    for e in items:
        png = png_of(e)
        if png is not None and png.is_file():
            with Image.open(png) as im:
                out.add(e.id, finish_image(im.convert("RGBA"), size))


def _write_split(task_dir: Path, ids: list[str], shots: int, seed: int, task: str) -> list[str]:
    train = choose_shots(ids, shots, seed, task)
    train_dir = task_dir / "train"
    train_dir.mkdir()
    for i in train:
        (train_dir / f"{i}.png").write_bytes((task_dir / "full" / f"{i}.png").read_bytes())
    return train


def _sources_info(src: Sources) -> dict:
    info = {
        "noto": {**LICENCES["noto"], "font_file": src.noto_path.name, "font_sha256": sha256_file(src.noto_path),
                 "font_version": _ttf_version_string(src.noto_path),
                 "debian_version": _debian_version("fonts-noto-color-emoji"),
                 "render_size": NOTO_BITMAP_SIZE, "layout_engine": src.noto.layout},
        "twemoji": {**LICENCES["twemoji"], "version": package_version(src.datasource)},
    }
    if src.openmoji is not None:
        info["openmoji"] = {**LICENCES["openmoji"], "version": package_version(src.openmoji),
                            "svg_rasteriser": src.rasteriser.backend}
    if src.fluent is not None:
        info["fluent"] = {**LICENCES["fluent"], "version": package_version(src.fluent),
                          "svg_rasteriser": src.rasteriser.backend}
    if src.emojione_dir is not None:
        info["emojione"] = {**LICENCES["emojione"], "version": package_version(src.emojione_dir)}
    if src.symbola_path is not None:
        info["symbola"] = {**LICENCES["symbola"], "font_file": src.symbola_path.name,
                           "font_sha256": sha256_file(src.symbola_path),
                           "font_version": _ttf_version_string(src.symbola_path),
                           "debian_version": _debian_version("fonts-symbola"), "render_size": SYMBOLA_SIZE}
    return info


def _source_of(style: str) -> str:
    """The package or font (a key of LICENCES) that a task style's images come from."""
    return _STYLE_SOURCE.get(style, style)


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
    symbola_font: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Build the emoji benchmark into `out` and return the manifest.

    Everything is written to a temporary sibling folder first and renamed into place at the end.
    Raises FileExistsError if `out` exists and is not empty (unless `overwrite`, which replaces only an
    earlier benchmark folder), FileNotFoundError naming the package to install when a source is missing,
    ValueError for bad arguments.
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
        raise FileExistsError(f"output folder {str(out)!r} exists and is not empty; pass overwrite=True "
                              f"(CLI: --overwrite) to replace it")

    def replaceable(folder: Path) -> None:
        check_replaceable(folder, "data", DATA_ENTRIES, inputs=[npm_dir, noto_font, symbola_font])

    check_writable(out, "data folder")
    if out.exists() and overwrite:
        replaceable(out)
    src = locate_sources(task_names, npm_dir, noto_font, symbola_font)  # every source before any work

    with atomic_directory(out, overwrite=True, check_replace=replaceable) as tmp:
        write_marker(tmp, "data")
        source = DedupWriter(tmp / "source")  # the source domain: every emoji the font draws as one glyph
        for e in _progress(src.emoji, "noto", len(src.emoji), progress):
            rgba = src.noto.render(e.text)
            source.add(e.id, finish_image(rgba, size) if rgba is not None else None)
        if not source.ids:
            raise ValueError(f"the font {str(src.noto_path)!r} rendered none of the {len(src.emoji)} emoji; is it a "
                             f"colour emoji font?")
        kept = set(source.ids)
        present = [e for e in src.emoji if e.id in kept]
        task_info: dict[str, dict] = {}
        for t in task_names:
            spec = TASKS[t]
            full = DedupWriter(tmp / t / "full")
            _render_style(spec, present, src, size, full, source.folder, progress)
            if len(full.ids) < shots:
                raise ValueError(f"task {t!r}: only {len(full.ids)} distinct images were made, fewer than {shots} shots")
            train = _write_split(tmp / t, full.ids, shots, seed, t)
            task_info[t] = {
                "kind": spec.kind, "role": spec.role, "style": spec.style, "description": spec.description,
                "n_full": len(full.ids), "n_duplicates_removed": full.duplicates, "n_train": len(train),
                "train_ids": train, "full_sha256": images_sha256(full.folder),
                "train_sha256": images_sha256(tmp / t / "train"), "licence": LICENCES[_source_of(spec.style)]["licence"],
            }
        manifest = {
            "format": "colorgan-emoji-benchmark", "manifest_version": MANIFEST_VERSION,
            "size": size, "seed": seed, "shots": shots, "margin": MARGIN,
            "shot_selection": "numpy.random.default_rng([seed, zlib.crc32(task)]).choice over sorted ids, no replacement",
            "deduplication": "identical renderings at the target size are kept once, the first by id",
            "n_metadata_emoji": len(src.emoji),
            "source": {"n": len(source.ids), "n_duplicates_removed": source.duplicates, "style": "noto",
                       "sha256": images_sha256(source.folder), "licence": LICENCES["noto"]["licence"]},
            "tasks": task_info,
            "sources": _sources_info(src),
            "software": {"pillow": PIL.__version__},
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        (tmp / "LICENSES.md").write_text(_licences_md(manifest), encoding="utf-8")
    return manifest


def _licences_md(m: dict) -> str:
    lines = ["# Licences and attribution for this emoji benchmark", "",
             "Generated by `colorgan data emoji`. Each folder keeps the licence of the artwork it was made from.", ""]
    names = {"noto": "Noto Color Emoji (folders source/ and the subset tasks)",
             "twemoji": "Twemoji (folder twemoji/)", "openmoji": "OpenMoji (folders openmoji/ and openmoji-black/)",
             "symbola": "Symbola (folder symbola/)", "fluent": "Fluent Emoji (folders fluent/ and fluent-contrast/)",
             "emojione": "EmojiOne 2 (folder emojione/)"}
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
