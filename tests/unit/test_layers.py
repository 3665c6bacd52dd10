"""The core's layering (style.md): ``facepass/`` imports no Ray, and nothing outside
``facepass/demo`` imports the demo (issue 32: production code does not stand on demo data)."""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "facepass"


def _imports(path: Path, package: list[str] | None = None) -> set[str]:
    """Every name an import in the file names, at any depth (functions, TYPE_CHECKING): ``from
    a.b import c`` gives ``a.b`` and ``a.b.c``. With the file's package, relative imports are
    resolved against it; without, they are named as written."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if package is None and not node.module:
                continue
            base = package[: len(package) - node.level + 1] if node.level and package is not None else []
            source = ".".join([*base, *([node.module] if node.module else [])])
            names.add(source)
            names.update(f"{source}.{alias.name}" for alias in node.names)
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


ROOT = CORE.parent
PACKAGES = ("facepass", "actors", "serve_app", "jobs", "bench")


def _modules() -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _edges(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project's modules this one imports, at module level or inside a function alike
    (TYPE_CHECKING blocks too): ``from a.b import c`` counts as importing ``a.b`` and, where it is
    a module, ``a.b.c`` (strict: a package whose ``__init__`` imports ``a.b`` loops back)."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    named = _imports(path, package)
    edges = set()
    for name in named:
        parts = name.split(".")
        while parts and ".".join(parts) not in modules:
            parts.pop()
        if parts and ".".join(parts) != module:
            edges.add(".".join(parts))
    return edges


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                group.append(top)
                if top == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_circle_anywhere() -> None:
    modules = _modules()
    assert {"facepass.settings", "facepass.builds", "facepass.vision.faces", "serve_app.ingress"} <= set(
        modules
    )
    graph = {name: _edges(name, path, modules) for name, path in modules.items()}
    assert _cycles(graph) == []
    # The checker finds a circle where there is one.
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_vision_layers_point_one_way() -> None:
    """builds (names) -> settings -> pack -> runtimes -> networks -> selection -> faces: nothing
    below imports anything above it (style.md, immich's machine-learning/ shape)."""
    modules = _modules()
    graph = {name: _edges(name, path, modules) for name, path in modules.items()}
    assert graph["facepass.builds"] == {"facepass.errors"}
    assert not {m for m in graph["facepass.settings"] if m.startswith("facepass.vision")}
    order = [
        "facepass.vision.pack",
        "facepass.vision.runtimes",
        "facepass.vision.detector",
        "facepass.vision.recognizer",
        "facepass.vision.networks",
        "facepass.vision.selection",
        "facepass.vision.faces",
    ]
    for at, module in enumerate(order):
        above = set(order[at + 1 :])
        assert not graph[module] & above, (module, graph[module] & above)
