"""The repository's shape, kept: modules and functions small enough to read (in the package
and in the exporter), a short README, and tests that share helpers through helper modules
rather than through each other."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MAX_MODULE_LINES = 700
MAX_README_LINES = 150
MAX_FUNCTION_LINES = 80
#: the package, and the exporter that makes its models (a top-level package of its own)
SOURCE_FOLDERS = ("reranker", "export")


def _source_files() -> list[Path]:
    """The Python files of the package and of the exporter beside it."""
    return [path for folder in SOURCE_FOLDERS for path in sorted((REPO / folder).rglob("*.py"))]


def test_no_module_of_the_package_or_the_exporter_is_over_700_lines() -> None:
    long = {
        str(path.relative_to(REPO)): n
        for path in _source_files()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


def test_no_function_of_the_package_or_the_exporter_is_over_80_lines() -> None:
    long = []
    for path in _source_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(REPO)}: {node.name} ({lines} lines)")
    assert long == []


def test_the_readme_fits_in_150_lines() -> None:
    assert len((REPO / "README.md").read_text(encoding="utf-8").splitlines()) <= MAX_README_LINES


def test_no_test_module_imports_another_test_module() -> None:
    offenders = []
    for path in (REPO / "tests").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                last = node.module.rsplit(".", 1)[-1]
                if node.module.startswith("tests.") and re.match(r"test_", last):
                    offenders.append(f"{path.relative_to(REPO)}: {node.module}")
    assert offenders == []
