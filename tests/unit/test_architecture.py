"""docs/ARCHITECTURE.md, enforced: nothing imports upwards, and no import cycle anywhere.

The package is spread over four folders (pyproject's `package-dir`: builders/, client/ and plugins/ are
`widefunnel.builders`, `.client`, `.plugins`), which import-graph tools that walk one package folder do not
follow; so the graph is read here from each file's `import` statements (deferred ones inside functions too).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[2]

# Highest first; a module may import its own layer and the layers below it.
LAYERS = (
    ("command line", ("widefunnel.cli",)),
    ("Triton glue", ("widefunnel.cluster", "widefunnel.server", "widefunnel.plugins")),
    ("build and use", ("widefunnel.builders", "widefunnel.client", "widefunnel.pipeline", "widefunnel.gateway",
                       "widefunnel.stub", "widefunnel.router")),
    ("core", ("widefunnel.ann", "widefunnel.merge", "widefunnel.validation", "widefunnel.sharding",
              "widefunnel.model_configs", "widefunnel.layout", "widefunnel.security", "widefunnel.config",
              "widefunnel.data", "widefunnel")),
)


def _modules() -> dict[str, Path]:
    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    out = {}
    for package, folder in mapping.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join((package, *parts))
            if any(name.startswith(p + ".") for p in mapping if p != package and p.startswith(package)):
                continue  # a sub-package mapped to its own folder
            out[name] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Modules ``name`` imports at run time (`from pkg import sub` is an import of pkg.sub, not of pkg;
    imports under `if TYPE_CHECKING:` are for annotations only)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = {f"{node.module}.{a.name}" for a in node.names} & MODULES.keys()
            found.update(subs or {node.module})
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _layer(module: str) -> int:
    """The layer of the longest prefix that names ``module`` or a package above it."""
    matches = [(len(p), depth) for depth, (_, prefixes) in enumerate(LAYERS) for p in prefixes
               if module == p or (module.startswith(p + ".") and p != "widefunnel")]
    return max(matches)[1] if matches else len(LAYERS) - 1


def test_every_module_is_read():
    assert {"widefunnel.cli", "widefunnel.builders.repository", "widefunnel.client.swap",
            "widefunnel.plugins.widefunnel_ann.model", "widefunnel.server.triton", "widefunnel.ann.kernels"} \
        <= set(MODULES)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_nothing_imports_upwards(module):
    upward = sorted(m for m in GRAPH[module] if _layer(m) < _layer(module))
    assert not upward, f"{module} ({LAYERS[_layer(module)][0]}) imports a layer above it: {upward}"


def _cycles() -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(component)

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle():
    assert _cycles() == [], "import cycles"


def test_the_cycle_check_finds_a_cycle(monkeypatch):
    """Not a rubber stamp: a back edge from the core's index to the exact scan is a cycle."""
    monkeypatch.setitem(GRAPH, "widefunnel.ann.index", GRAPH["widefunnel.ann.index"] | {"widefunnel.ann.search"})
    assert {"widefunnel.ann.index", "widefunnel.ann.search"} <= set().union(*_cycles())
