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
