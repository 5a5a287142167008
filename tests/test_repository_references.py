"""Every file the documentation points a reader to exists in this repository.

Read: README.md, docs/*.md, bench/*.md, deploy/README.md, the policy YAML shipped in gate/, and the
docstrings and comments of gate/, mlflow_plugin/, bench/ and deploy/ Python files. Each path under
gate/, mlflow_plugin/, docs/, bench/, deploy/ or tests/ named there (backticked or plain) must
exist, and nothing may cite a file outside the repository (a design note or paper copy that only
the authors' machines have): design notes live in docs/, papers are cited by their authors
(docs/metrics.md lists them).
"""

from __future__ import annotations

import ast
import functools
import io
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PATH = re.compile(r"(?<![\w/.-])(?:gate|mlflow_plugin|docs|bench|deploy|tests)/[\w./-]*[\w/]")
# Written when a benchmark runs, or by the user as deploy/README.md says; ignored by git.
GENERATED = ("bench/out/", "deploy/.env")
OUTSIDE = re.compile(r"DESIGN\.md|\.\./shared\b|/work/shared|\bseeds/|\b\d{3}_[0-9a-f]{16}\.txt")


def _documents() -> list[Path]:
    return [ROOT / "README.md", *sorted(ROOT.glob("docs/*.md")), *sorted(ROOT.glob("bench/*.md")),
            ROOT / "deploy" / "README.md", *sorted(ROOT.glob("gate/**/*.yaml"))]


def _python_files() -> list[Path]:
    return [path for folder in ("gate", "mlflow_plugin", "bench", "deploy") for path in sorted((ROOT / folder).rglob("*.py"))]


def _comments_and_docstrings(path: Path) -> str:
    source = path.read_text()
    parts = [token.string for token in tokenize.generate_tokens(io.StringIO(source).readline)
             if token.type == tokenize.COMMENT]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            docstring = ast.get_docstring(node, clean=False)
            if docstring:
                parts.append(docstring)
    return "\n".join(parts)


@functools.cache
def _texts() -> dict[str, str]:
    texts = {str(path.relative_to(ROOT)): path.read_text() for path in _documents()}
    texts.update({str(path.relative_to(ROOT)): _comments_and_docstrings(path) for path in _python_files()})
    return texts


def missing_paths(texts: dict[str, str]) -> list[str]:
    """``where: path`` for every named repository path that does not exist."""
    missing = []
    for where, text in texts.items():
        for match in PATH.finditer(text):
            path = match.group(0)
            if not path.startswith(GENERATED) and not (ROOT / path).exists():
                missing.append(f"{where}: {path}")
    return sorted(set(missing))


def outside_references(texts: dict[str, str]) -> list[str]:
    return sorted({f"{where}: {m.group(0)}" for where, text in texts.items() for m in OUTSIDE.finditer(text)})


def test_the_scan_finds_the_paths_that_are_named():
    found = {path for text in _texts().values() for path in PATH.findall(text)}
    # named in a docstring (gate/layers/planner.py), in docs/ and in bench/*.py comments respectively
    assert {"docs/metrics.md", "gate/solver/precision.py", "bench/out/zoo.json"} <= found


@pytest.mark.parametrize(("text", "found"), [
    ("see `gate/solver/spectrum.py`.", ["gate/solver/spectrum.py"]),
    ("(docs/metrics.md) and bench/RESULTS.md, deploy/local/", ["docs/metrics.md", "bench/RESULTS.md", "deploy/local/"]),
    ("/weightgate/api/ledger and weightgate/report.html", []),
])
def test_path_pattern(text, found):
    assert PATH.findall(text) == found


@pytest.mark.parametrize("text", ["(DESIGN.md)", "../shared/ref/", "/work/shared/seeds/x", "see 004_289276ed8238cc9e.txt"])
def test_outside_pattern(text):
    assert OUTSIDE.search(text)


def test_every_named_path_exists():
    assert missing_paths(_texts()) == []


def test_nothing_cites_files_outside_the_repository():
    assert outside_references(_texts()) == []
