"""`colorgan data emoji`: build the emoji few-shot benchmark from locally installed packages."""
from __future__ import annotations

import argparse

from colorgan.data import emoji as emoji_data
from colorgan.data.emoji_sources import INSTALL_NOTO, INSTALL_NPM, INSTALL_SVG, INSTALL_SYMBOLA


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `data` command (subcommand `emoji`)."""
    p = subparsers.add_parser("data", help="build datasets (emoji few-shot benchmark)",
                              description="Build datasets from locally installed packages; nothing is downloaded.")
    sub = p.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    e = sub.add_parser(
        "emoji", help="emoji benchmark: Noto source; far-style, subset and near-style tasks",
        description=(f"Needs `{INSTALL_NOTO}` and `{INSTALL_NPM}`; OpenMoji and Fluent Emoji SVGs also need "
                     f"{INSTALL_SVG}; the "
                     f"symbola task needs `{INSTALL_SYMBOLA}`. Tasks: "
                     + "; ".join(f"{t.name} ({t.kind}, {t.role})" for t in emoji_data.TASKS.values()) + "."),
    )
    e.add_argument("--out", required=True, help="output folder (must be empty or missing unless --overwrite)")
    e.add_argument("--size", type=int, default=64, choices=(32, 64, 128), help="square image size (default 64)")
    e.add_argument("--seed", type=int, default=emoji_data.DEFAULT_SEED, help="seed of the few-shot splits (default 0)")
    e.add_argument("--shots", type=int, default=emoji_data.DEFAULT_SHOTS, help="training images per task (default 10)")
    e.add_argument("--tasks", nargs="+", choices=sorted(emoji_data.TASKS), default=None,
                   help="target tasks to build (default: all)")
    e.add_argument("--npm-dir", default=None,
                   help="node_modules folder holding emoji-datasource-twitter and openmoji (default: ./node_modules, "
                        "$COLORGAN_NPM_DIR, ~/.cache/colorgan/npm/node_modules)")
    e.add_argument("--noto-font", default=None, help="path to NotoColorEmoji.ttf (default: the Debian location)")
    e.add_argument("--symbola-font", default=None, help="path to Symbola's .ttf (default: the Debian location)")
    e.add_argument("--overwrite", action="store_true", help="replace an earlier benchmark folder")
    e.add_argument("--no-progress", action="store_true", help="no progress bars")
    e.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build the benchmark and print its counts."""
    m = emoji_data.build_emoji_benchmark(
        args.out, args.size, seed=args.seed, shots=args.shots, tasks=args.tasks, npm_dir=args.npm_dir,
        noto_font=args.noto_font, symbola_font=args.symbola_font, overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    print(f"wrote {args.out} (size {m['size']}, seed {m['seed']}): source {m['source']['n']} images")
    for name, t in m["tasks"].items():
        print(f"  {name:<15} {t['kind']:<10} {t['role']:<10} full {t['n_full']:>5} "
              f"({t['n_duplicates_removed']} duplicates removed)  train {t['n_train']}")
    print(f"see {args.out}/manifest.json and {args.out}/LICENSES.md for versions, licences and attribution")
    return 0
