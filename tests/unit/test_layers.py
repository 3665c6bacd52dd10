"""The core's layering (style.md): ``facepass/`` imports no Ray, and nothing outside
``facepass/demo`` imports the demo (issue 32: production code does not stand on demo data)."""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "facepass"


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_the_core_imports_neither_ray_nor_the_demo() -> None:
    files = [p for p in CORE.rglob("*.py") if "migrations" not in p.parts]
    assert len(files) > 20
    ray = {
        str(p.relative_to(CORE))
        for p in files
        if any(n == "ray" or n.startswith("ray.") for n in _imports(p))
    }
    assert ray == set()
    demo = {
        str(p.relative_to(CORE))
        for p in files
        if "demo" not in p.relative_to(CORE).parts
        and any(n == "facepass.demo" or n.startswith("facepass.demo.") for n in _imports(p))
    }
    assert demo == set()
