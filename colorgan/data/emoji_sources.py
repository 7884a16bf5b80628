"""Where the emoji benchmark's images come from: locating the installed sources (fonts, npm packages),
their metadata and licences, and rendering one emoji from each (nothing is downloaded at run time).

- Noto Color Emoji, Debian `fonts-noto-color-emoji` (font OFL-1.1, artwork Apache-2.0), rendered with Pillow;
- Symbola, Debian `fonts-symbola` (a monochrome outline font of the same emoji; free for any use), rendered black;
- Twemoji 64x64 PNGs and the emoji metadata (codepoints, categories) from npm `emoji-datasource-twitter`;
- OpenMoji colour and black line-art SVGs from npm `openmoji`, rasterised with CairoSVG (or `rsvg-convert`);
- Microsoft's Fluent Emoji SVGs from npm `fluentui-emoji` (files named by emoji name), flat colour and High Contrast
  black line art, rasterised the same way;
- EmojiOne 2's 128x128 PNGs from npm `emojione@2.2.7` (later releases are under a licence that is not Creative
  Commons, so other major versions are refused).
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path
from PIL import Image, ImageDraw, ImageFont

NOTO_FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf",
    "/usr/share/fonts/noto/NotoColorEmoji.ttf",
    "/usr/share/fonts/google-noto-emoji/NotoColorEmoji.ttf",
)
MISSING_CHAR = "\U0010FFFF"
NOTO_BITMAP_SIZE = 109  # the only size FreeType accepts for this CBDT bitmap font
SYMBOLA_FONT_CANDIDATES = ("/usr/share/fonts/truetype/ancient-scripts/Symbola_hint.ttf",
                           "/usr/share/fonts/truetype/ancient-scripts/Symbola.ttf")
SYMBOLA_SIZE = 109  # an outline font: any size; the same as Noto's
NPM_PREFIX_HINT = "~/.cache/colorgan/npm"
TWEMOJI_PKG = "emoji-datasource-twitter"
OPENMOJI_PKG = "openmoji"
FLUENT_PKG = "fluentui-emoji"
EMOJIONE_PKG = "emojione"
EMOJIONE_VERSION = "2.2.7"  # the last release with Creative Commons artwork (3.x and later: the JoyPixels licences)
MARGIN = 0.04  # empty border, as a fraction of the square canvas, around each cropped emoji

INSTALL_NOTO = "apt-get install fonts-noto-color-emoji"
INSTALL_NPM = (f"npm install --prefix {NPM_PREFIX_HINT} {TWEMOJI_PKG} {OPENMOJI_PKG} {FLUENT_PKG} "
               f"{EMOJIONE_PKG}@{EMOJIONE_VERSION}")
INSTALL_SVG = "pip install cairosvg  (needs the cairo library: apt-get install libcairo2), or apt-get install librsvg2-bin"
INSTALL_SYMBOLA = "apt-get install fonts-symbola"

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
    "symbola": {
        "package": "Debian fonts-symbola",
        "licence": "free for any use (the Symbola fonts' own terms, as packaged by Debian)",
        "attribution": "Symbola by George Douros (Unicode Fonts for Ancient Scripts), via Debian's fonts-symbola; "
                       "glyphs rendered black on white, cropped, padded and resized.",
    },
    "openmoji": {
        "package": f"npm {OPENMOJI_PKG}",
        "licence": "CC-BY-SA-4.0",
        "attribution": "All emojis designed by OpenMoji - the open-source emoji and icon project. "
                       "License: CC BY-SA 4.0 (https://creativecommons.org/licenses/by-sa/4.0/). "
                       "SVGs were rasterised, cropped, padded, composited on white and resized; the derived images "
                       "are shared under the same licence.",
    },
    "fluent": {
        "package": f"npm {FLUENT_PKG}",
        "licence": "MIT",
        "attribution": "Fluent Emoji, Copyright (c) Microsoft Corporation, MIT licence "
                       "(https://github.com/microsoft/fluentui-emoji), as packaged in npm fluentui-emoji (Copyright (c) "
                       "2022 Mohammad Abu Mattar, MIT licence). The flat and High Contrast SVGs were rasterised, "
                       "cropped, padded, composited on white and resized.",
    },
    "emojione": {
        "package": f"npm {EMOJIONE_PKG}@{EMOJIONE_VERSION}",
        "licence": "CC-BY-4.0 artwork per the package's LICENSE.md (its package.json says CC-BY-SA-4.0): derived "
                   "images shared as CC-BY-SA-4.0",
        "attribution": "Emoji artwork provided by EmojiOne (https://www.emojione.com), version 2.2.7, licensed under "
                       "CC-BY 4.0 (https://creativecommons.org/licenses/by/4.0/) as its package's LICENSE.md states "
                       "(its package.json names CC-BY-SA 4.0, so the derived images are shared under CC BY-SA 4.0, "
                       "which meets both). The 128x128 PNGs were cropped, padded, composited on white and resized.",
    },
}
# skin-tone modifier -> the suffix of Fluent Emoji's file names (the untoned variant of a toned emoji is "-default")
FLUENT_TONES = {"1F3FB": "light", "1F3FC": "medium-light", "1F3FD": "medium", "1F3FE": "medium-dark", "1F3FF": "dark"}


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


def find_font(path: str | os.PathLike | None, candidates: tuple[str, ...], what: str, install: str) -> Path:
    """Locate a font file (`path`, else the first of `candidates` that exists); FileNotFoundError saying how to
    install it otherwise."""
    cands = [Path(path).expanduser()] if path is not None else [Path(p) for p in candidates]
    for c in cands:
        if c.is_file():
            return c
    raise FileNotFoundError(f"{what} font not found (looked at: {', '.join(map(str, cands))}). Install it with "
                            f"`{install}` (Debian/Ubuntu) or pass its path.")


def find_noto_font(path: str | os.PathLike | None = None) -> Path:
    """Locate NotoColorEmoji.ttf; raises FileNotFoundError saying how to install it."""
    return find_font(path, NOTO_FONT_CANDIDATES, "Noto Color Emoji", INSTALL_NOTO)


def find_symbola_font(path: str | os.PathLike | None = None) -> Path:
    """Locate Symbola's font file; raises FileNotFoundError saying how to install it."""
    return find_font(path, SYMBOLA_FONT_CANDIDATES, "Symbola", INSTALL_SYMBOLA)


class FontRenderer:
    """Render emoji sequences with a font through Pillow (raqm layout when available): colour bitmap fonts
    in their own colours, monochrome fonts in black."""

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


def openmoji_index(om_dir: Path, variant: str = "color") -> dict[str, Path]:
    """match_key -> SVG path of one OpenMoji variant ("color" or "black"), from data/openmoji.json."""
    meta = om_dir / "data" / "openmoji.json"
    svg_dir = om_dir / variant / "svg"
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


FLUENT_VARIANTS = {"fluent": "flat", "fluent-contrast": "high-contrast"}  # task style -> folder under icons/


def fluent_index(fluent_dir: Path, variant: str = "flat") -> dict[str, Path]:
    """File stem -> SVG path of one Fluent Emoji style (icons/<variant>/<name>.svg, e.g. grinning-face.svg)."""
    svg_dir = fluent_dir / "icons" / variant
    if not svg_dir.is_dir():
        raise FileNotFoundError(f"expected Fluent Emoji SVGs in {str(svg_dir)!r}; reinstall with `{INSTALL_NPM}`")
    return {p.stem: p for p in sorted(svg_dir.glob("*.svg")) if p.is_file()}


def fluent_svg(e: Emoji, index: dict[str, Path]) -> Path | None:
    """The Fluent Emoji SVG of one emoji, matched by its metadata name ("Grinning Face" -> grinning-face, a skin
    tone as a suffix: thumbs-up-medium-dark; an untoned emoji that has tones: thumbs-up-default), or None."""
    stem = re.sub(r"[^a-z0-9]+", "-", e.name.lower()).strip("-")
    tones = {FLUENT_TONES[cp] for cp in e.unified.split("-") if cp in FLUENT_TONES}
    if not stem or len(tones) > 1:
        return None  # no name, or two people of different tones (Fluent draws one tone per emoji)
    if tones:
        return index.get(f"{stem}-{tones.pop()}")
    return index.get(stem) or index.get(f"{stem}-default")


def emojione_index(pkg_dir: Path) -> dict[str, Path]:
    """match_key -> EmojiOne 2 PNG (assets/png_128x128/<codepoints>.png, e.g. 1f600.png, 0023-20e3.png).

    Raises FileNotFoundError for another major version than 2 (its artwork is not under a Creative Commons licence)
    or a package without the PNG folder, saying what to install."""
    install = f"npm install --prefix {NPM_PREFIX_HINT} {EMOJIONE_PKG}@{EMOJIONE_VERSION}"
    version = package_version(pkg_dir)
    if version.split(".")[0] != EMOJIONE_VERSION.split(".")[0]:
        raise FileNotFoundError(f"expected npm {EMOJIONE_PKG} {EMOJIONE_VERSION} in {str(pkg_dir)!r} (later releases' "
                                f"artwork is not Creative Commons), found version {version!r}; install it with "
                                f"`{install}`")
    png_dir = pkg_dir / "assets" / "png_128x128"
    if not png_dir.is_dir():
        raise FileNotFoundError(f"expected EmojiOne PNGs in {str(png_dir)!r}; reinstall with `{install}`")
    return {match_key(p.stem): p for p in sorted(png_dir.glob("*.png")) if p.is_file()}
