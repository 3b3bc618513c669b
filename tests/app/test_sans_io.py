"""node/app is sans-I/O: it imports none of the modules that bring time, randomness, threads,
processes, sockets or storage engines into the state machine (checked on the source's AST)."""

from __future__ import annotations

import ast
from pathlib import Path

import node.app

FORBIDDEN = {"grpc", "lmdb", "asyncio", "threading", "time", "random", "os", "socket", "subprocess"}
# Ways around a static import check; none of them belongs in a deterministic state machine.
FORBIDDEN_CALLS = {"__import__", "import_module", "eval", "exec"}

APP_DIR = Path(node.app.__file__).parent


def imported_modules(tree: ast.AST) -> set[str]:
    found: set[str] = set()
    for item in ast.walk(tree):
        if isinstance(item, ast.Import):
            found.update(alias.name for alias in item.names)
        elif isinstance(item, ast.ImportFrom) and item.module is not None and item.level == 0:
            found.add(item.module)
    return found


def called_names(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for item in ast.walk(tree):
        if isinstance(item, ast.Call):
            fn = item.func
            if isinstance(fn, ast.Name):
                names.add(fn.id)
            elif isinstance(fn, ast.Attribute):
                names.add(fn.attr)
    return names


def test_the_checker_sees_imports_and_calls() -> None:
    tree = ast.parse("import os.path\nfrom time import monotonic\nimport grpc as g\nx = __import__('lmdb')\n")
    assert {m.split(".")[0] for m in imported_modules(tree)} == {"os", "time", "grpc"}
    assert "__import__" in called_names(tree)


def test_node_app_imports_no_io_module() -> None:
    files = sorted(APP_DIR.rglob("*.py"))
    assert len(files) >= 8, f"expected the ledger modules under {APP_DIR}"
    offenders = []
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        for module in imported_modules(tree):
            if module.split(".")[0] in FORBIDDEN:
                offenders.append(f"{path.name}: import {module}")
        for name in called_names(tree) & FORBIDDEN_CALLS:
            offenders.append(f"{path.name}: calls {name}")
    assert offenders == []


def test_protobuf_is_used_only_by_the_codec() -> None:
    users = []
    for path in sorted(APP_DIR.rglob("*.py")):
        modules = imported_modules(ast.parse(path.read_text()))
        if any(m.startswith(("google.protobuf", "ledger.v1")) for m in modules):
            users.append(path.name)
    assert users == ["codec.py"]


def float_uses(tree: ast.AST, name: str) -> list[str]:
    found = []
    for item in ast.walk(tree):
        if isinstance(item, ast.Constant) and isinstance(item.value, float):
            found.append(f"{name}:{item.lineno}: float literal {item.value}")
        elif isinstance(item, ast.Div | ast.Pow):
            found.append(f"{name}: true division or power")
        elif isinstance(item, ast.Name) and item.id in ("float", "Decimal", "round"):
            found.append(f"{name}:{item.lineno}: {item.id}")
    return found


def test_the_float_checker_sees_floats() -> None:
    assert len(float_uses(ast.parse("x = 1.5\ny = a / b\nz = float(q)\nw = 2 ** 3\nv = 7 // 2\n"), "t")) == 4


def test_no_floats_in_the_ledger() -> None:
    """Money is integers: no float literal, no float(), no true division anywhere in node/app."""
    offenders = []
    for path in sorted(APP_DIR.rglob("*.py")):
        offenders += float_uses(ast.parse(path.read_text()), path.name)
    assert offenders == []
