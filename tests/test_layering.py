"""Packages import only packages below them: no cycle, and each layer can be read without those above it."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "medpeft"
# bottom to top; a package may import itself and anything earlier in this list
LAYERS = [
    "io",
    "cli",
    "adapters",
    "models",
    "data",
    "metrics",
    "experiment",
    "evaluation",
    "prediction",
    "reports",
    "training",
    "benchmark",
]


def _imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("medpeft."):
            names.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            names.update(a.name.split(".")[1] for a in node.names if a.name.startswith("medpeft."))
    return names


def test_every_package_is_in_a_layer() -> None:
    found = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir() if p.suffix == ".py" or p.is_dir()}
    assert found - {"__init__", "__pycache__"} == set(LAYERS)


def test_packages_import_only_those_below() -> None:
    problems = []
    for rank, layer in enumerate(LAYERS):
        files = [PACKAGE / f"{layer}.py"] if (PACKAGE / f"{layer}.py").is_file() else (PACKAGE / layer).rglob("*.py")
        for path in files:
            for imported in _imported_packages(path) - {layer}:
                if imported not in LAYERS[:rank]:
                    problems.append(f"{path.relative_to(PACKAGE.parent)} imports medpeft.{imported}")
    assert not problems, "\n".join(problems)
