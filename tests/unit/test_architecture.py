"""docs/ARCHITECTURE.md, enforced: each top folder is a layer, nothing imports upwards, no import cycle between
modules or between folders.

The layers are read from ARCHITECTURE.md's table (layer, folders), highest first, and each module's layer from
the folder it sits in (pyproject's `package-dir`: builders/ is `widefunnel.builders`, ...), so the test is told
nothing the tree and the document do not say. Imports are read from each file's `import` statements (deferred
ones inside functions too), since graph tools that walk one package folder do not follow the mapping.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parent
while not (ROOT / "pyproject.toml").exists():
    ROOT = ROOT.parent
PACKAGE_DIRS: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
    "package-dir"]


def _documented_layers() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(layer, folders) rows of ARCHITECTURE.md's "The layers" table, highest first."""
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    table = text.split("## The layers", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0] not in ("layer", "") and not set(cells[0]) <= {"-"}:
            rows.append((cells[0], tuple(f.rstrip("/") for f in re.findall(r"`([^`]+/)`", cells[1]))))
    return tuple(rows)


LAYERS = _documented_layers()
FOLDER_LAYER = {folder: depth for depth, (_, folders) in enumerate(LAYERS) for folder in folders}


def _modules() -> dict[str, Path]:
    mapping = PACKAGE_DIRS
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


def _is_type_checking(test: ast.expr) -> bool:
    """`if TYPE_CHECKING:` or `if typing.TYPE_CHECKING:`."""
    return getattr(test, "id", "") == "TYPE_CHECKING" or getattr(test, "attr", "") == "TYPE_CHECKING"


def _imports(name: str, path: Path, type_checking: bool = False) -> set[str]:
    """Modules ``name`` imports at run time (`from pkg import sub` is an import of pkg.sub, not of pkg;
    imports under `if TYPE_CHECKING:` are for annotations only, and counted only with ``type_checking``)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test) and not type_checking:
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
# With the annotations' imports: two modules that name each other's types still have to be read together.
TYPED_GRAPH = {name: _imports(name, path, type_checking=True) for name, path in MODULES.items()}


def _folder(module: str) -> str:
    """The top folder a module's file sits in (the longest package-dir prefix)."""
    package = max((p for p in PACKAGE_DIRS if module == p or module.startswith(p + ".")), key=len)
    return PACKAGE_DIRS[package].split("/")[0]


def _layer(module: str) -> int:
    return FOLDER_LAYER[_folder(module)]


def test_every_folder_is_in_exactly_one_documented_layer():
    assert [name for name, _ in LAYERS] == ["command line", "Triton glue", "build and use", "core"]
    documented = [f for _, folders in LAYERS for f in folders]
    assert len(documented) == len(set(documented)), "a folder in two layers"
    assert set(documented) == {d.split("/")[0] for d in PACKAGE_DIRS.values()}, "pyproject and ARCHITECTURE.md differ"


def test_every_module_is_read():
    assert {"widefunnel.cli.main", "widefunnel.builders.repository", "widefunnel.client.swap",
            "widefunnel.plugins.widefunnel_ann.model", "widefunnel.server.triton", "widefunnel.ann.kernels"} \
        <= set(MODULES)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_nothing_imports_upwards(module):
    upward = sorted(m for m in GRAPH[module] if _layer(m) < _layer(module))
    assert not upward, f"{module} ({LAYERS[_layer(module)][0]}) imports a layer above it: {upward}"


def _cycles(graph: dict[str, set[str]] | None = None) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan); of `GRAPH` by default."""
    graph = GRAPH if graph is None else graph
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle():
    assert _cycles() == [], "import cycles"


def test_no_import_cycle_even_through_type_hints():
    """A cycle hidden under `if TYPE_CHECKING:` is still a cycle of meaning (the supervisor once read the whole
    `TritonServer`); a narrow interface, defined by the side that uses it, breaks it."""
    assert _cycles(TYPED_GRAPH) == [], "import cycles through TYPE_CHECKING imports"


def test_the_typed_graph_reads_type_checking_imports(tmp_path):
    """Not a rubber stamp: an import under `if TYPE_CHECKING:` is an edge of the typed graph only."""
    path = tmp_path / "m.py"
    path.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                    "    from widefunnel.server.triton import TritonServer\n")
    assert _imports("widefunnel.server.supervisor", path) == set()
    assert _imports("widefunnel.server.supervisor", path, type_checking=True) == {"widefunnel.server.triton"}


def test_no_import_cycle_between_folders():
    """Within a layer folders may import each other, but never both ways (a folder is one unit to read)."""
    edges = {(_folder(a), _folder(b)) for a, targets in GRAPH.items() for b in targets if _folder(a) != _folder(b)}
    both_ways = sorted((a, b) for a, b in edges if (b, a) in edges and a < b)
    assert not both_ways, f"folders importing each other: {both_ways}"


def test_the_cycle_check_finds_a_cycle(monkeypatch):
    """Not a rubber stamp: a back edge from the core's index to the exact scan is a cycle."""
    monkeypatch.setitem(GRAPH, "widefunnel.ann.index", GRAPH["widefunnel.ann.index"] | {"widefunnel.ann.search"})
    assert {"widefunnel.ann.index", "widefunnel.ann.search"} <= set().union(*_cycles())


# ------------------------------------------------------------------ the conventions ARCHITECTURE.md states
PLUGIN_MODELS = sorted((ROOT / "plugins").glob("*/model.py"))


def _names(tree: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | \
        {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}


@pytest.mark.parametrize("path", PLUGIN_MODELS, ids=lambda p: p.parent.name)
def test_every_python_model_answers_failures_through_the_one_mapping(path):
    tree = ast.parse(path.read_text())
    names = _names(tree)
    assert {"respond_each", "failure_response"} & names, f"{path}: execute neither uses respond_each nor " \
                                                         "failure_response"
    assert "TritonError" not in names, f"{path} builds its own TritonError (use failure_response)"


@pytest.mark.parametrize("path", PLUGIN_MODELS, ids=lambda p: p.parent.name)
def test_every_python_model_reads_parameters_through_model_parameters_and_imports_the_site_first(path):
    text = path.read_text()
    tree = ast.parse(text)
    assert "model_parameters" in _names(tree), f"{path} does not read its parameters with model_parameters"
    raw = [n for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value == "parameters"]
    assert not raw, f"{path} reads the raw config's parameters"
    imports = [(n.names[0].name if isinstance(n, ast.Import) else n.module).split(".")[0]
               for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    outside_stdlib = [name for name in imports if name not in sys.stdlib_module_names and name != "__future__"]
    assert outside_stdlib[0] == "widefunnel_site", f"{path}: {outside_stdlib[0]} is imported before widefunnel_site"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if not m.startswith("widefunnel.cli")))
def test_only_the_command_line_prints(module):
    calls = [n for n in ast.walk(ast.parse(MODULES[module].read_text())) if isinstance(n, ast.Call)
             and isinstance(n.func, ast.Name) and n.func.id == "print"]
    assert not calls, f"{module} prints (line {calls[0].lineno}); log instead"


def _layout_file_names() -> dict[str, str]:
    """The file and folder names `widefunnel/layout.py` owns (its module-level string constants)."""
    tree = ast.parse((ROOT / "widefunnel" / "layout.py").read_text())
    return {t.id: n.value.value for n in tree.body if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant)
            and isinstance(n.value.value, str) for t in n.targets if isinstance(t, ast.Name) and t.id.isupper()
            and re.fullmatch(r"[a-z_]+(\.[a-z]+)?", n.value.value)}


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "widefunnel.layout"))
def test_a_repository_file_name_is_spelled_only_in_layout(module):
    """One owner per fact: a file or folder name of the repository layout is `layout.NAME` everywhere else."""
    names = {v: k for k, v in _layout_file_names().items() if "." in v}
    spelled = sorted({n.value for n in ast.walk(ast.parse(MODULES[module].read_text()))
                      if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value in names})
    assert not spelled, f"{module} spells {spelled}; use widefunnel.layout.{[names[s] for s in spelled]}"


def _tensor_names() -> set[str]:
    """The tensor names `widefunnel/tensor_names.py` owns: every string constant assigned there (its namespaces'
    attributes included)."""
    tree = ast.parse((ROOT / "widefunnel" / "tensor_names.py").read_text())
    return {n.value.value for n in ast.walk(tree) if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant)
            and isinstance(n.value.value, str)}


# Tensor names that are ordinary words elsewhere too: a string equal to one of these is not refused.
ORDINARY_WORDS = {
    "item_id": "the datasets' item id role and column (widefunnel/data.py, widefunnel/dataset/)",
    "fingerprint": "a build record's key in builds.json (widefunnel/layout.py)",
    "alpha": "a key of the [merge] config table (builders/repository.py)",
    "top_n": "a key of the [merge] config table (builders/repository.py)",
    "score": "a column title of the command line's recommendations table (cli/main.py)",
}


def _spelled_tensor_names(path: Path, names: set[str]) -> list[tuple[int, str]]:
    """(line, name) of each string constant in ``path`` equal to one of ``names``; `__all__` entries are Python
    names, not tensors, and are skipped."""
    tree = ast.parse(path.read_text())
    exported = {id(c) for n in ast.walk(tree) if isinstance(n, ast.Assign)
                and any(getattr(t, "id", "") == "__all__" for t in n.targets) for c in ast.walk(n.value)}
    return sorted((n.lineno, n.value) for n in ast.walk(tree) if isinstance(n, ast.Constant)
                  and isinstance(n.value, str) and n.value in names and id(n) not in exported)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "widefunnel.tensor_names"))
def test_a_tensor_name_is_spelled_only_in_tensor_names(module):
    """One owner per fact: a Triton tensor name is `tensor_names.Step.NAME` / `Client.NAME` everywhere else."""
    path = MODULES[module]
    spelled = _spelled_tensor_names(path, _tensor_names() - ORDINARY_WORDS.keys())
    where = ", ".join(f"{path.relative_to(ROOT)}:{line} {name!r}" for line, name in spelled)
    assert not spelled, f"{module} spells tensor names ({where}); use widefunnel.tensor_names"


def test_the_tensor_name_check_finds_a_name(tmp_path):
    """Not a rubber stamp: a spelled name is found by line, an `__all__` entry and an ordinary word are not, and
    every ordinary word is still a name the module owns (else its exclusion is stale)."""
    path = tmp_path / "m.py"
    path.write_text('__all__ = ["value_weights"]\nx = {"QUERY": 1}\ny = cfg["alpha"]\nz = "seed_item_id"\n')
    assert _spelled_tensor_names(path, _tensor_names() - ORDINARY_WORDS.keys()) == [(2, "QUERY"), (4, "seed_item_id")]
    assert ORDINARY_WORDS.keys() <= _tensor_names()


def test_per_head_tensor_names_follow_the_heads():
    """`Step`'s per-head tuples are in `merge.HEADS` order (the configs and the merge zip them with it)."""
    from widefunnel.merge import HEADS
    from widefunnel.tensor_names import Step

    for j, head in enumerate(HEADS):
        assert Step.EMBEDDINGS[j].endswith(head.upper())
        assert all(name.endswith(head.upper()) for name in Step.MERGE_FINGERPRINTS[j])
        assert all(name.startswith(head[:3].upper()) for name in Step.MERGE_HEADS[j])
