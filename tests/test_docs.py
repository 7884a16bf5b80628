"""The README and docs/ stay correct against the code: every command in a ```bash block parses with the
command's own parser (options, choices, types), every `make` target exists, every relative link resolves,
and nothing cites a design file outside the repository."""
from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from colorgan.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BASH = re.compile(r"```bash\n(.*?)```", re.S)


def commands(page: Path) -> list[list[str]]:
    """The command lines of a page's ```bash blocks (continuations joined, comments dropped), as tokens."""
    out = []
    for block in BASH.findall(page.read_text()):
        for line in block.replace("\\\n", " ").splitlines():
            tokens = shlex.split(line, comments=True)
            if tokens:
                out.append(tokens)
    return out


def colorgan_args(tokens: list[str]) -> list[str] | None:
    """The arguments after `colorgan` / `python -m colorgan` / `torchrun ... -m colorgan`, else None."""
    while tokens and "=" in tokens[0] and not tokens[0].startswith("-"):
        tokens = tokens[1:]  # VAR=value prefixes
    if tokens[:1] == ["colorgan"]:
        return tokens[1:]
    for i in range(len(tokens) - 1):
        if tokens[i] == "-m" and tokens[i + 1] == "colorgan":
            return tokens[i + 2:]
    return None


ALL = [(p.relative_to(ROOT).as_posix(), t) for p in PAGES for t in commands(p)]


@pytest.mark.parametrize("page,tokens", [(p, t) for p, t in ALL if colorgan_args(t) is not None],
                         ids=lambda v: v if isinstance(v, str) else " ".join(v)[:60])
def test_colorgan_commands_parse(page, tokens, capsys):
    try:
        build_parser().parse_args(colorgan_args(tokens))
    except SystemExit:
        pytest.fail(f"{page}: `{' '.join(tokens)}` does not parse: {capsys.readouterr().err.strip()}")


def bench_args(tokens: list[str]) -> list[str] | None:
    """The arguments after `python -m bench` (subcommand first), else None."""
    for i in range(len(tokens) - 1):
        if tokens[i] == "-m" and tokens[i + 1] == "bench":
            return tokens[i + 2:]
    return None


@pytest.mark.parametrize("page,tokens", [(p, t) for p, t in ALL if bench_args(t)],
                         ids=lambda v: v if isinstance(v, str) else " ".join(v)[:60])
def test_bench_commands_parse(page, tokens, capsys):
    from bench.__main__ import SUBCOMMANDS, build_parser as bench_parser

    sub, *rest = bench_args(tokens)
    assert sub in SUBCOMMANDS, f"{page}: `{' '.join(tokens)}`: no bench subcommand {sub!r}"
    try:
        bench_parser(sub).parse_args(rest)
    except SystemExit:
        pytest.fail(f"{page}: `{' '.join(tokens)}` does not parse: {capsys.readouterr().err.strip()}")


def test_make_targets_exist():
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
    used = {t[1] for _, t in ALL if t[0] == "make" and len(t) > 1}
    assert used and used <= targets, used - targets


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page):
    text = re.sub(r"```.*?```|`[^`\n]*`", "", page.read_text(), flags=re.S)  # code is not markdown
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        assert (page.parent / target).exists(), f"{page.name} links to {target}, which does not exist"


def test_nothing_cites_a_file_outside_the_repository():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    offenders = []
    for name in tracked:
        path = ROOT / name
        if path.suffix not in (".py", ".md", ".toml") or name == "tests/test_docs.py" or not path.is_file():
            continue
        if re.search(r"SPEC §|SPEC\.md|readme_export", path.read_text(errors="ignore")):
            offenders.append(name)
    assert not offenders, f"these cite a design file that is not in the repository: {offenders}"


def test_readme_is_a_front_page():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 220
    for needed in ("make demo", "make test", "## Status", "## Safety", "docs/design.md"):
        assert needed in text
