"""python_backends' rooms: imports point one way (python_backends/README.md)."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "python_backends"
ALGORITHM_ROOMS = ("tokenizer", "llm", "decoder", "engines")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every module of ours that `name` imports, at module level or inside a function."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        found.update(t for t in targets if t in known and t != name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def test_the_graph_sees_relative_imports():
    graph = _graph()
    assert "python_backends.serving.stub" in graph["python_backends.serving.engine_client"]
    assert "python_backends.tokenizer.resample" in graph["python_backends.decoder.prompt_mel"]


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if nxt.startswith(node + ".") or node.startswith(nxt + "."):
                continue  # a package and its own modules
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(nxt):] + [nxt])
                                     if nxt in path else f"import cycle through {nxt}")
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_algorithm_rooms_never_import_serving():
    offenders = {name: sorted(t for t in targets if t.startswith("python_backends.serving"))
                 for name, targets in _graph().items()
                 if name.split(".")[1:2] and name.split(".")[1] in ALGORITHM_ROOMS}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_only_the_stub_module_imports_the_backend_utils():
    users = sorted(_module_name(p) for p in PACKAGE.rglob("*.py")
                   if "import triton_python_backend_utils" in p.read_text())
    assert users == ["python_backends.serving.stub"]
