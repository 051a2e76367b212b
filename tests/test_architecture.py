"""The import graph keeps its shape: no cycles (function-level imports included), the math free of I/O, the
worker's runtimes free of gRPC, and WD-DP independent of the CodedPrivateML master."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "cpml"


def _modules() -> dict[str, Path]:
    modules = {}
    for path in ROOT.rglob("*.py"):
        if "generated" in path.parts:
            continue
        name = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    return modules


def _imports(name: str, path: Path, at_runtime: bool = False) -> set[str]:
    """Every module this one imports, anywhere in it (a package's own submodules named in `from pkg import x`)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    if at_runtime:  # leave out `if TYPE_CHECKING:` blocks: they import for annotations only
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
                node.body = []
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            found |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return found


MODULES = _modules()
IMPORTS = {name: _imports(name, path) for name, path in MODULES.items()}
GRAPH = {name: {m for m in found if m in MODULES and m != name} for name, found in IMPORTS.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    assert _cycles(GRAPH) == []


def test_the_cycle_check_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("package", ["cpml.field", "cpml.protocol", "cpml.mpc"])
def test_the_math_imports_no_network_or_event_loop(package):
    offending = {
        name: sorted(
            m
            for m in IMPORTS[name]
            if m.split(".")[0] in {"grpc", "grpc_health", "asyncio"} or m.startswith("cpml.wire")
        )
        for name in MODULES
        if name == package or name.startswith(package + ".")
    }
    assert {name: found for name, found in offending.items() if found} == {}


def test_wd_dp_does_not_import_the_coded_master():
    offending = {
        name: sorted(m for m in GRAPH[name] if m.startswith("cpml.master"))
        for name in MODULES
        if name.startswith("cpml.dp")
    }
    assert {name: found for name, found in offending.items() if found} == {}


def test_only_the_wire_layer_touches_generated_messages_at_runtime():
    offending = {
        name: sorted(
            m
            for m in _imports(name, path, at_runtime=True)
            if m.startswith("cpml.wire.generated") and m.endswith("_pb2")
        )
        for name, path in MODULES.items()
        if not name.startswith("cpml.wire")
    }
    assert {name: found for name, found in offending.items() if found} == {}


@pytest.mark.parametrize("module", ["cpml.worker.compute", "cpml.worker.mpc_runtime"])
def test_the_worker_runtimes_know_no_grpc(module):
    reached, todo = set(), [module]
    while todo:  # every cpml module it imports, directly or through others
        name = todo.pop()
        if name not in reached:
            reached.add(name)
            todo.extend(GRAPH[name])
    offending = {
        name: sorted(m for m in IMPORTS[name] if m.split(".")[0] in {"grpc", "grpc_health"}) for name in reached
    }
    assert {name: found for name, found in offending.items() if found} == {}
