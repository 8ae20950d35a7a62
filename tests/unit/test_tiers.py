"""The two tiers stay apart (tests/README.md): every test file lies in tests/unit or tests/served, and nothing
under tests/unit asks for a build or a server: no served fixture, no server class, no `widefunnel build|serve|
demo|cluster`. A file this test refuses belongs in tests/served (or its served tests do: split it)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
UNIT, SERVED = TESTS / "unit", TESTS / "served"

# Modules and names that start a tritonserver or build a repository (the pure parts of widefunnel.server,
# its submodules distribution, ports and processes, may be imported directly).
# (the supervisor is not here: its bookkeeping is tested without a server; only its thread needs one)
SERVER_MODULES = {"widefunnel.server", "widefunnel.server.triton", "widefunnel.cli.cluster"}
SERVER_NAMES = {"TritonServer", "LocalCluster"}
BUILD_IMPORTS = {("widefunnel.builders.repository", "build")}
SERVED_HELPER_MODULES = {"conftest", "helpers"}  # tests/served/helpers.py, re-exported by tests/served/conftest.py
CLI_COMMANDS = {"build", "serve", "demo", "cluster"}


def served_fixtures() -> set[str]:
    """The fixtures tests/served/conftest.py defines, and the helpers it offers (helpers.py's functions)."""
    names = set()
    for path in (SERVED / "conftest.py", SERVED / "helpers.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("pytest_"):
                names.add(node.name)
    return names


def _strings(node: ast.AST) -> list[str]:
    if isinstance(node, (ast.List, ast.Tuple)):
        return [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
    return []


def served_uses(source: str, fixtures: set[str]) -> list[str]:
    """What in `source` needs a build or a server, one line each (empty: the file belongs in tests/unit)."""
    found = []
    tree = ast.parse(source)
    cli_main = set()
    for node in ast.walk(tree):
        where = f"line {getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            found += [f"{where}: import {a.name}" for a in node.names
                      if a.name in SERVER_MODULES or a.name in SERVED_HELPER_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module in SERVED_HELPER_MODULES:
                found.append(f"{where}: from {node.module} import ... (the served tier's helpers)")
            elif node.module == "widefunnel.server":
                found.append(f"{where}: from widefunnel.server import ... (TritonServer's package: import the pure "
                             "submodules distribution, ports, processes instead)")
            elif node.module in SERVER_MODULES:
                found.append(f"{where}: from {node.module} import ... (it starts servers)")
            for a in node.names:
                if a.name in SERVER_NAMES or (node.module, a.name) in BUILD_IMPORTS:
                    found.append(f"{where}: imports {a.name}")
                if node.module == "widefunnel.cli" and a.name == "main":
                    cli_main.add(a.asname or a.name)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = [a.arg for a in node.args.args + node.args.kwonlyargs]
            found += [f"{where}: {node.name} asks for the served fixture {a!r}" for a in args if a in fixtures]
        elif isinstance(node, ast.Attribute) and node.attr in SERVER_NAMES:
            found.append(f"{where}: uses {node.attr}")
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            first = _strings(node.args[0]) if node.args else []
            if name == "getfixturevalue" and node.args and isinstance(node.args[0], ast.Constant) \
                    and node.args[0].value in fixtures:
                found.append(f"{where}: getfixturevalue({node.args[0].value!r})")
            elif name in cli_main and first[:1] and first[0] in CLI_COMMANDS:
                found.append(f"{where}: widefunnel {first[0]}")
            elif any(s in ("widefunnel", "widefunnel.cli") for s in first) and CLI_COMMANDS & set(first):
                found.append(f"{where}: a process running widefunnel {sorted(CLI_COMMANDS & set(first))[0]}")
    return found


def test_every_test_file_is_in_a_tier():
    loose = sorted(p.relative_to(TESTS).as_posix() for p in TESTS.rglob("test_*.py")
                   if p.parent not in (UNIT, SERVED))
    assert not loose, f"move these into tests/unit or tests/served (tests/README.md says which): {loose}"


def test_test_file_names_are_unique_across_the_tiers():
    # tests/ has no __init__.py: pytest imports each test file by its bare name, so two of one name collide
    unit, served = ({p.name for p in tier.glob("test_*.py")} for tier in (UNIT, SERVED))
    assert not unit & served, f"rename one of each (the served one with a _served suffix): {sorted(unit & served)}"


@pytest.mark.parametrize("path", sorted(UNIT.glob("*.py")), ids=lambda p: p.name)
def test_the_unit_tier_needs_no_build_and_no_server(path):
    found = served_uses(path.read_text(), served_fixtures())
    assert not found, f"{path.name} needs a build or a server; move it (or those tests) to tests/served: {found}"


@pytest.mark.parametrize("source", [
    "def test_x(server):\n    pass\n",
    "def test_x(built_repository, tmp_path):\n    pass\n",
    "from helpers import private_server\n",
    "from conftest import admin_client\n",
    "from widefunnel.server import TritonServer\n",
    "import widefunnel.server\n",
    "from widefunnel.cli.cluster import LocalCluster\n",
    "from widefunnel.builders.repository import build\n",
    "import widefunnel.server.triton as t\n",
    "def test_x(request):\n    request.getfixturevalue('client')\n",
    "from widefunnel.cli import main\ndef test_x():\n    main(['serve', '--repository', 'r'])\n",
    "import subprocess, sys\nsubprocess.run([sys.executable, '-m', 'widefunnel.cli', 'build'])\n",
])
def test_the_check_finds_a_build_or_a_server(source):
    assert served_uses(source, served_fixtures())


def test_the_check_lets_pure_tests_through():
    source = ("from widefunnel.server.processes import dead_instances\nfrom widefunnel.cli import main\n"
              "from widefunnel.builders.repository import step_configs\n"
              "def test_x(tmp_path, test_config, monkeypatch):\n    main(['items', 'remove', '3'])\n")
    assert served_uses(source, served_fixtures()) == []
    assert {"built_repository", "server", "client", "private_server", "admin_client"} <= served_fixtures()
