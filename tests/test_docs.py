"""The docs never rot: every ```python block of README.md and docs/**/*.md runs, every relative
link resolves, and nothing points outside the repository.

Conventions for code blocks (docs/architecture.md, "Docs", says the same):

- Each fenced ``python`` block runs in a fresh Python process whose working directory is a
  fresh temporary directory.
- ``<!-- continues -->`` on the line before a fence: the block runs after the previous
  ``python`` block of the same file, in the same process (names and files carry over).
- ``# test: OLD -> NEW`` at the end of a line: the test replaces OLD by NEW in that line (a
  shorter setting); a reader runs the line as written.
- ``<!-- skip: reason -->`` on the line before a fence: the block is not run. Keep it rare;
  blocks that need a file the user brings are fenced ``text``, not ``python``.

The README's tour is also the regression test of the NaN its first TorchCVForce example gave
(a non-periodic dihedral difference on capped alanine, which starts at phi = psi = pi): the
exact block runs its 2,000 steps and every reported energy must be finite.
"""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
DOC_FILES = [README] + sorted(DOCS.rglob("*.md"))

FENCE = re.compile(r"^(?P<indent> *)(?P<fence>```+|~~~+)\s*(?P<info>[^`\s]*)")
SUBSTITUTION = re.compile(r"\s*#\s*test:\s*(?P<old>.+?)\s*->\s*(?P<new>.+?)\s*$")
CONTINUES = "<!-- continues -->"
SKIP = re.compile(r"<!--\s*skip:\s*(?P<reason>.+?)\s*-->")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


@dataclass
class Block:
    path: Path
    line: int           # 1-based line of the first code line
    info: str           # the fence's info string ("python", "bash", ...)
    code: str
    continues: bool
    skip: str | None
    heading: str        # nearest heading above the block


@dataclass
class Chain:
    """Blocks that run in order in one process."""

    blocks: list = field(default_factory=list)
    id: str = ""


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces -> hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", heading)
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def parse_blocks(path: Path) -> list:
    lines = path.read_text().splitlines()
    blocks, heading, i = [], "", 0
    while i < len(lines):
        line = lines[i]
        match = FENCE.match(line)
        if match is None:
            head = HEADING.match(line)
            if head:
                heading = head.group(2)
            i += 1
            continue
        fence = match.group("fence")
        start, body = i + 1, []
        i += 1
        while i < len(lines) and not lines[i].lstrip().startswith(fence):
            body.append(lines[i])
            i += 1
        if i >= len(lines):
            raise AssertionError(f"{rel(path)}:{start}: code fence never closed")
        previous = lines[start - 2].strip() if start >= 2 else ""
        skip = SKIP.search(previous)
        blocks.append(Block(path, start + 1, match.group("info").lower(), "\n".join(body) + "\n",
                            previous == CONTINUES, skip.group("reason") if skip else None,
                            heading))
        i += 1
    return blocks


def apply_substitutions(block: Block) -> str:
    out = []
    for number, line in enumerate(block.code.splitlines(), start=block.line):
        match = SUBSTITUTION.search(line)
        if match:
            code = line[:match.start()]
            old, new = match.group("old"), match.group("new")
            if old not in code:
                raise AssertionError(f"{rel(block.path)}:{number}: '# test: {old} -> {new}' "
                                     f"but {old!r} is not in the line")
            line = code.replace(old, new)
        out.append(line)
    return "\n".join(out) + "\n"


def python_chains() -> list:
    chains = []
    for path in DOC_FILES:
        last = None
        seen = {}
        for block in parse_blocks(path):
            if block.info not in ("python", "py", "python3"):
                continue
            if block.skip is not None:
                last = None
                continue
            if block.continues:
                if last is None:
                    raise AssertionError(f"{rel(path)}:{block.line}: '{CONTINUES}' but no "
                                         "python block runs before it in this file")
                last.blocks.append(block)
                continue
            base = f"{rel(path)}#{slug(block.heading) or 'top'}"
            seen[base] = seen.get(base, 0) + 1
            last = Chain([block], base if seen[base] == 1 else f"{base}-{seen[base]}")
            chains.append(last)
    return chains


CHAINS = python_chains()

# Runs the blocks of one chain in one namespace; each block is compiled with its doc file name
# and line numbers, so a failure's traceback points at the doc.
RUNNER = r"""
import json, sys
blocks = json.load(open(sys.argv[1]))
namespace = {"__name__": "__main__"}
for block in blocks:
    print(f"--- {block['path']}:{block['line']}", flush=True)
    code = compile("\n" * (block["line"] - 1) + block["code"], block["path"], "exec")
    exec(code, namespace)
"""


def run_chain(chain: Chain, cwd: Path) -> subprocess.CompletedProcess:
    spec = cwd / "_doc_blocks.json"
    spec.write_text(json.dumps([{"path": str(b.path), "line": b.line,
                                 "code": apply_substitutions(b)} for b in chain.blocks]))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, "-c", RUNNER, str(spec)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


# -- checks on what a block made, beyond "it ran" ------------------------------------------------

def _check_tour(cwd: Path) -> None:
    """The README tour: 2,000 steps under the TorchCVForce bias, every energy finite."""
    rows = (cwd / "state.csv").read_text().splitlines()
    header = [h.strip('"#') for h in rows[0].split(",")]
    values = [[float(v) for v in row.split(",")] for row in rows[1:]]
    steps = [row[header.index("Step")] for row in values]
    energies = [row[header.index("Potential Energy (kJ/mole)")] for row in values]
    assert steps and max(steps) >= 2000, f"the tour reported up to step {max(steps, default=0)}"
    assert all(math.isfinite(e) for e in energies), f"non-finite energies: {energies}"
    cv_rows = (cwd / "cvs.csv").read_text().splitlines()[1:]
    assert cv_rows and all(math.isfinite(float(v)) for row in cv_rows for v in row.split(","))


CHECKS = {"README.md#five-minute-tour": _check_tour}


def test_every_check_names_a_chain():
    ids = {chain.id for chain in CHAINS}
    assert set(CHECKS) <= ids, f"checks for missing blocks: {set(CHECKS) - ids}; blocks: {ids}"


def test_tour_has_no_shortcut():
    """The regression block runs as written: no '# test:' substitution shortens it."""
    (tour,) = [chain for chain in CHAINS if chain.id == "README.md#five-minute-tour"]
    code = "".join(block.code for block in tour.blocks)
    assert "TorchCVForce" in code and "# test:" not in code


@pytest.mark.parametrize("chain", CHAINS, ids=[chain.id for chain in CHAINS])
def test_python_block_runs(chain, tmp_path):
    done = run_chain(chain, tmp_path)
    where = ", ".join(f"{rel(b.path)}:{b.line}" for b in chain.blocks)
    assert done.returncode == 0, f"{where} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    if chain.id in CHECKS:
        CHECKS[chain.id](tmp_path)


# -- links and pointers ----------------------------------------------------------------------------

LINK = re.compile(r"(?<!\!)\[[^\]]*\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)|"
                  r"!\[[^\]]*\]\((?P<image>[^)\s]+)\)")


def prose(path: Path) -> str:
    """The file without its code blocks and inline code (a link there is not a link)."""
    lines, inside = [], None
    for line in path.read_text().splitlines():
        match = FENCE.match(line)
        if match and inside is None:
            inside = match.group("fence")
            lines.append("")
            continue
        if inside is not None:
            if line.lstrip().startswith(inside):
                inside = None
            lines.append("")
            continue
        lines.append(re.sub(r"`[^`]*`", "", line))
    return "\n".join(lines)


def anchors(path: Path) -> set:
    found = set()
    for line in prose(path).splitlines():
        head = HEADING.match(line)
        if head:
            found.add(slug(head.group(2)))
    return found


@pytest.mark.parametrize("path", DOC_FILES, ids=[rel(p) for p in DOC_FILES])
def test_relative_links_resolve(path):
    broken = []
    for number, line in enumerate(prose(path).splitlines(), start=1):
        for match in LINK.finditer(line):
            target = match.group("target") or match.group("image")
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            resolved = (path.parent / file_part).resolve() if file_part else path
            if ROOT not in resolved.parents and resolved != ROOT:
                broken.append(f"{number}: {target} points outside the repository")
            elif not resolved.exists():
                broken.append(f"{number}: {target} does not exist")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                broken.append(f"{number}: {target}: no heading #{anchor} in {rel(resolved)}")
    assert not broken, f"{rel(path)}:\n" + "\n".join(broken)


POINTER_FILES = DOC_FILES + sorted((ROOT / "examples").glob("*.py"))


@pytest.mark.parametrize("path", POINTER_FILES, ids=[rel(p) for p in POINTER_FILES])
def test_nothing_points_outside_the_repository(path):
    text = path.read_text()
    for forbidden in ("../shared", "/work/", "BLUEPRINT"):
        assert forbidden not in text, f"{rel(path)} names {forbidden!r}, outside the repository"


def test_code_names_only_existing_docs():
    """Doc paths named in the package, examples, benchmarks and build files exist."""
    named = re.compile(r"\b(docs/[\w./-]+\.md)\b")
    sources = [*(ROOT / "openmm_geom").rglob("*.py"), *(ROOT / "examples").glob("*.py"),
               *(ROOT / "benchmarks").glob("*.py"), ROOT / "Makefile", ROOT / "pyproject.toml"]
    missing = [f"{rel(p)}: {m}" for p in sources for m in named.findall(p.read_text())
               if not (ROOT / m).is_file()]
    assert not missing, "\n".join(missing)


# -- the README's promises --------------------------------------------------------------------------

def test_readme_is_short_and_starts_with_make():
    lines = README.read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines (at most 250)"
    commands = [line.split("#")[0].strip() for block in parse_blocks(README)
                if block.info in ("bash", "sh", "shell", "console")
                for line in block.code.splitlines() if line.split("#")[0].strip()]
    assert commands[:2] == ["make demo", "make test"], commands[:2]


def test_readme_links_every_guide():
    text = README.read_text()
    guides = ["cv-biasing", "coarse-graining", "potentials", "geom2vec", "signatures",
              "export-contract", "cli", "install"]
    missing = [g for g in guides if f"(docs/{g}.md)" not in text]
    assert not missing, f"README.md does not link docs/{missing}"
    assert all((DOCS / f"{guide}.md").is_file() for guide in guides)


def test_python_version_agrees_with_pyproject():
    pyproject = (ROOT / "pyproject.toml").read_text()
    (minimum,) = re.findall(r'requires-python\s*=\s*">=\s*(3\.\d+)"', pyproject)
    readme = README.read_text()
    assert f"Python {minimum}" in readme, f"pyproject requires >= {minimum}; README never says so"


# -- the commands the docs name exist, with the options they use -----------------------------------

def documented_commands() -> list:
    """(where, words) of every ``openmm-geom ...`` command in shell blocks and inline code."""
    found = []
    for path in DOC_FILES:
        for block in parse_blocks(path):
            if block.info not in ("bash", "sh", "shell", "console"):
                continue
            text = re.sub(r"\\\n\s*", " ", block.code)
            for number, line in enumerate(text.splitlines(), start=block.line):
                code = re.split(r"\s#", " " + line)[0]
                for part in re.split(r"&&|;|\|\|", code):
                    if part.strip().startswith("openmm-geom"):
                        found.append((f"{rel(path)}:{number}", part.split()[1:]))
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            for span in re.findall(r"`(openmm-geom [^`]*)`", line):
                found.append((f"{rel(path)}:{number}", span.replace("\\|", "|").split()[1:]))
    return found


def test_documented_commands_and_options_exist():
    import argparse

    from openmm_geom.cli import build_parser

    def subcommands(parser):
        return next((a.choices for a in parser._actions
                     if isinstance(a, argparse._SubParsersAction)), {})

    root = build_parser()
    wrong = []
    commands = documented_commands()
    for where, words in commands:
        parser, path = root, ["openmm-geom"]
        options = {o for a in root._actions for o in a.option_strings}
        for word in words:
            choices = subcommands(parser)
            if word in choices:
                parser = choices[word]
                path.append(word)
                options = {o for a in parser._actions for o in a.option_strings}
            elif choices and not word.startswith("-") and word != "...":
                wrong.append(f"{where}: {' '.join(path)} has no command {word!r}")
                break
            for flag in re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", word):
                if flag not in options:
                    wrong.append(f"{where}: {' '.join(path)} has no option {flag}")
    assert len(commands) > 20, f"only {len(commands)} documented commands found"
    assert not wrong, "\n".join(wrong)
