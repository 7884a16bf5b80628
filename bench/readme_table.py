"""Regenerate the README's benchmark table from the newest committed GPU session.

    python -m bench readme-table [--readme README.md] [--results bench/results] [--session NAME] [--check]

The newest session is the folder under --results holding an env.json that is not a dry run, newest by
the time recorded in it. The table replaces the text between the lines `<!-- bench-table:start -->` and
`<!-- bench-table:end -->` of the README; without those markers it is printed instead (and the README is
left alone). --check exits 1 when the README's table is out of date, changing nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from bench import common, session_report

START, END = "<!-- bench-table:start -->", "<!-- bench-table:end -->"


def sessions(results: Path) -> list:
    """(time, folder) of every committed, non-dry session under `results`, oldest first."""
    out = []
    for env in Path(results).glob("*/env.json"):
        try:
            doc = json.loads(env.read_text())
        except ValueError:
            continue
        if doc.get("dry_run"):
            continue
        out.append(((doc.get("environment") or {}).get("time") or "", env.parent.name, env.parent))
    return [(t, f) for t, _name, f in sorted(out)]


def replace_between(text: str, body: str) -> Optional[str]:
    """`text` with the lines between the markers replaced by `body`, or None when the markers are missing
    or out of order."""
    i, j = text.find(START), text.find(END)
    if i < 0 or j < 0 or j < i:
        return None
    head = text[:i + len(START)]
    return head + "\n" + body.rstrip("\n") + "\n" + text[j:]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench readme-table", description=__doc__.split("\n\n")[0])
    p.add_argument("--readme", default="README.md")
    p.add_argument("--results", default=str(common.RESULTS_DIR))
    p.add_argument("--session", default=None, help="a session folder name under --results (default: the newest)")
    p.add_argument("--check", action="store_true", help="exit 1 if the README's table is out of date")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    results = Path(args.results)
    if args.session:
        folder = results / args.session
        if not (folder / "env.json").is_file():
            raise SystemExit(f"{folder} holds no session (no env.json)")
    else:
        found = sessions(results)
        if not found:
            raise SystemExit(f"no GPU session under {results} (folders with an env.json that is not a dry run)")
        folder = found[-1][1]
    readme = Path(args.readme)
    try:
        link = os.path.relpath(folder / "summary.md", readme.resolve().parent)
    except ValueError:
        link = str(folder / "summary.md")
    body = session_report.readme_table(folder, link=link)
    text = readme.read_text() if readme.is_file() else ""
    new = replace_between(text, body)
    if new is None:
        print(f"{readme}: no '{START}' ... '{END}' markers; the table from {folder.name}:\n", file=sys.stderr)
        print(body)
        return 0
    if args.check:
        if new != text:
            print(f"{readme}: the benchmark table is out of date (newest session {folder.name})", file=sys.stderr)
            return 1
        return 0
    if new != text:
        common.write_text(readme, new)
        print(f"{readme}: benchmark table from {folder.name}")
    else:
        print(f"{readme}: benchmark table already up to date ({folder.name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
