"""node/pbft stays sans-I/O: no network, storage, clock, randomness or concurrency imports."""

from __future__ import annotations

import ast
from pathlib import Path

FORBIDDEN = {"grpc", "lmdb", "asyncio", "threading", "time", "random", "os", "socket", "subprocess"}
PBFT = Path(__file__).resolve().parents[2] / "node" / "pbft"


def test_no_forbidden_imports_in_node_pbft() -> None:
    files = sorted(PBFT.glob("*.py"))
    assert len(files) >= 8
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"


def test_the_node_core_and_what_it_imports_stay_sans_io() -> None:
    # node/core.py holds the node loop's decisions; the seeded simulator runs it, so it (and
    # every module of node/ it imports, transitively) must not reach the clock, disk or network.
    # (ledger/ is the shared library: genesis and key files load through it, outside the core.)
    root = PBFT.parents[1]
    todo, seen = ["node.core"], set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = root / (module.replace(".", "/") + ".py")
        if not path.exists():
            path = root / module.replace(".", "/") / "__init__.py"
        if not path.exists():
            continue  # a name imported from a module, not a module
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN, f"{module} imports {name}"
                if name.split(".")[0] == "node":
                    todo.append(name)
    assert {"node.core", "node.fairqueue", "node.storage.blocks"} <= seen
