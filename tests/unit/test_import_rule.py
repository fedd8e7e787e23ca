"""DESIGN.md's import rule: iot_gateway, alerts and video_index never import each other or
command_center; the kernel imports no area. Read from the source, so it holds for new files too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
AREAS = ("iot_gateway", "alerts", "video_index", "hotline", "notify", "command_center")
FORBIDDEN = {
    "kernel": set(AREAS) | {"frontend"},
    "iot_gateway": {"alerts", "video_index", "hotline", "notify", "command_center"},
    "alerts": {"iot_gateway", "video_index", "hotline", "notify", "command_center"},
    "video_index": {"iot_gateway", "alerts", "hotline", "notify", "command_center"},
    "hotline": {"iot_gateway", "alerts", "video_index", "notify", "command_center"},
    "notify": {"iot_gateway", "alerts", "video_index", "hotline", "command_center"},
}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_keeps_to_its_imports(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"{package} has no source"
    offences = {
        str(f.relative_to(ROOT)): sorted(imported_packages(f) & FORBIDDEN[package])
        for f in files
        if imported_packages(f) & FORBIDDEN[package]
    }
    assert offences == {}


def test_the_checker_sees_an_offending_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from command_center.api import build_app\nimport alerts.rules\n")
    assert imported_packages(bad) >= {"command_center", "alerts"}
