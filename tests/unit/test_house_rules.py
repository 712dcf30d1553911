"""The layout rules of the redesign (issue 9), checked on the source so they cannot quietly come back:
settings are read only in studio/config.py, modules stay about 500 lines, functions about 80 (declarative UI
layout excepted), and the one-copy modules (fs, aws) have no rivals."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from studio.testing.servers import REPO

SOURCES = sorted((REPO / "studio").rglob("*.py")) + [REPO / "app.py"]
PRODUCT = [p for p in SOURCES if "testing" not in p.relative_to(REPO).parts]
MAX_MODULE_LINES = 560  # "about 500": a little slack, never a subsystem in one file again
MAX_FUNCTION_LINES = 90  # "about 80"


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def _environment_reads(tree: ast.AST) -> list[int]:
    """Lines that read os.environ / os.getenv (writes such as os.environ.setdefault for a library are allowed)."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "getenv":
            lines.append(node.lineno)
        if isinstance(node, ast.Subscript) and ast.unparse(node.value) == "os.environ":
            if not isinstance(getattr(node, "ctx", None), ast.Store):
                lines.append(node.lineno)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = ast.unparse(node.func.value)
            if owner == "os.environ" and node.func.attr in ("get", "copy", "items", "keys", "values"):
                lines.append(node.lineno)
        if isinstance(node, ast.Name) and node.id == "environ" and isinstance(node.ctx, ast.Load):
            lines.append(node.lineno)
    return lines


def test_settings_are_read_only_in_config():
    offenders = {}
    for path in PRODUCT:
        if path == REPO / "studio" / "config.py":
            continue
        lines = _environment_reads(ast.parse(path.read_text()))
        if lines:
            offenders[_rel(path)] = lines
    assert not offenders, f"environment read outside studio/config.py (read it there, pass settings in): {offenders}"


@pytest.mark.parametrize("path", PRODUCT, ids=_rel)
def test_modules_stay_small(path: Path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{_rel(path)} has {lines} lines: split it into modules by responsibility"


def _is_ui_layout(path: Path, name: str) -> bool:
    return "ui" in path.relative_to(REPO).parts and name.startswith("build")


def test_functions_stay_short():
    long = []
    for path in PRODUCT:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES and not _is_ui_layout(path, node.name):
                    long.append(f"{_rel(path)}:{node.lineno} {node.name} ({length} lines)")
    assert not long, long


def test_one_copy_of_the_aws_and_file_helpers():
    """boto3 sessions and clients are built in studio/aws.py only; temp-file-then-rename lives in studio/fs.py."""
    session = re.compile(r"boto3\.(session\.)?Session\(|boto3\.client\(")
    rename = re.compile(r"os\.replace\(|os\.rename\(|tempfile\.mkstemp\(|tempfile\.mkdtemp\(")
    for path in PRODUCT:
        text = path.read_text()
        if path.name != "aws.py":
            assert not session.search(text), f"{_rel(path)} builds its own boto3 session/client: use studio.aws"
        if path.name != "fs.py":
            assert not rename.search(text), f"{_rel(path)} writes temp files and renames them: use studio.fs"
