"""The import graph: imports point down the layers only, and no module takes part in an import circle.

Read from the source with `ast` (nothing is imported). Every import counts, also those inside functions and under
`if TYPE_CHECKING:`: a lazy or type-only import hides a circle (two modules that know each other), it does not remove
it.
"""
from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Top-level packages, lowest first: a package may import only packages before it (and itself).
PACKAGES = ("swarm", "peers", "coordinator", "benchmarks")

# Inside swarm: each module's layer, by its longest matching prefix, lowest first. A module may import its own layer
# or lower ones; the `swarm` package itself (the public facade, lazily importing what it re-exports) is the top.
# swarm.compression spans two layers on purpose: its tensor codecs (bytes on the wire) sit below the all-reduce that
# sends them, its round codecs (PowerSGD, top-k, the auto choice: programs of all-reduce phases) above it.
SWARM_LAYERS: tuple[tuple[str, ...], ...] = (
    ("swarm.errors", "swarm.proto"),
    ("swarm.net", "swarm.process", "swarm.compression.codecs", "swarm.compression.error_feedback",
     "swarm.compression.blockquant", "swarm.compression.sparse"),
    ("swarm.config",),
    ("swarm.averaging",),
    ("swarm.compression",),
    ("swarm.optim",),
    ("swarm.collaboration", "swarm.observer", "swarm.modes"),
    ("swarm.simulate", "swarm.cli", "swarm.integrations"),
)

pytestmark = pytest.mark.timeout(60)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def python_files() -> Iterator[Path]:
    for package in PACKAGES:
        yield from (REPO / package).rglob("*.py")


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The project modules that `path` imports (a `from pkg import name` naming a module counts as that module)."""
    name = module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            subs = {f"{base}.{alias.name}" for alias in node.names} & modules
            found |= subs or {base}
    return {m for m in found if m.split(".")[0] in PACKAGES and m != name}


def graph() -> dict[str, set[str]]:
    files = list(python_files())
    modules = {module_name(p) for p in files}
    edges = {}
    for path in files:
        targets = set()
        for target in imports_of(path, modules):
            while target not in modules and "." in target:  # `import a.b.c` where c is an attribute
                target = target.rsplit(".", 1)[0]
            targets.add(target)
        edges[module_name(path)] = targets & modules
    return edges


def swarm_layer(module: str) -> int:
    if module == "swarm":
        return len(SWARM_LAYERS)
    best, layer = "", None
    for rank, prefixes in enumerate(SWARM_LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best):
                best, layer = prefix, rank
    assert layer is not None, f"{module} has no layer: add it to SWARM_LAYERS"
    return layer


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_top_level_packages_import_only_lower_ones():
    wrong = [
        f"{a} -> {b}"
        for a, targets in graph().items()
        for b in targets
        if PACKAGES.index(b.split(".")[0]) > PACKAGES.index(a.split(".")[0])
    ]
    assert not wrong, "imports that point up: " + ", ".join(sorted(wrong))


def test_every_swarm_module_imports_only_its_layer_or_lower_ones():
    edges = graph()
    wrong = [
        f"{a} (layer {swarm_layer(a)}) -> {b} (layer {swarm_layer(b)})"
        for a, targets in edges.items()
        if a.startswith("swarm")
        for b in targets
        if b.startswith("swarm") and swarm_layer(b) > swarm_layer(a)
    ]
    assert not wrong, "imports that point up:\n" + "\n".join(sorted(wrong))


def test_no_import_circles():
    found = circles(graph())
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_checks_see_a_circle_and_an_upward_import():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert swarm_layer("swarm.net.node") < swarm_layer("swarm.averaging.allreduce") < swarm_layer("swarm.cli")
