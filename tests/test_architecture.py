"""The architecture's standing rules, measured on the source (issue 19): no import cycles among the shipped
packages and the tools, one module that assembles the eviction pass, one path that deletes block files, no table
outside the versioned schema, and no tool inside the shipped packages (nor imported by them)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHIPPED = ("kvfs", "evictor", "connector")


def modules(*packages: str) -> dict[str, Path]:
    out = {}
    for pkg in packages:
        for path in (REPO / pkg).rglob("*.py"):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = path
    return out


def _runtime_imports(tree: ast.AST) -> list[str]:
    """Every import executed at some point (module level or deferred into a function), but not those under
    `if TYPE_CHECKING:`, which never run."""
    names: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.extend(f"{node.module}.{a.name}" for a in node.names)
            names.append(node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return names


def import_graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        for name in _runtime_imports(ast.parse(path.read_text())):
            target = resolve(name)
            # A package's __init__ importing its own submodules is not a cycle through them.
            if target and target != mod and not target.startswith(mod + "."):
                graph[mod].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (iterative Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycles() -> None:
    assert cycles(import_graph(modules(*SHIPPED, "tools"))) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _files_matching(pattern: str, packages: tuple[str, ...] = SHIPPED) -> set[str]:
    regex = re.compile(pattern)
    return {
        str(path.relative_to(REPO))
        for path in modules(*packages).values()
        if any(
            regex.search(line) for line in path.read_text().splitlines() if not line.lstrip().startswith("#")
        )
    }


def test_the_pass_is_assembled_only_in_kvfs_eviction() -> None:
    """Planning, rechecking and executing are called only inside kvfs/eviction: callers use run_pass (or
    delete_corrupt, which is execute alone)."""
    outside = {
        f
        for f in _files_matching(r"\b(plan_pass|execute_plan|still_unused|recency_recheck)\(")
        if not f.startswith("kvfs/eviction/")
    }
    assert outside == set()


def test_one_delete_path_for_block_files() -> None:
    """Only kvfs/eviction/execute.py removes block files, through RootGuard (kvfs/safety.py, which is the
    root-confined unlink itself); verify's corrupt files and the replay go through it too."""
    callers = _files_matching(r"\.unlink_many\(|\bguard\.unlink\(|RootGuard\([^)]*\)\.unlink\(")
    assert callers - {"kvfs/safety.py"} == {"kvfs/eviction/execute.py"}


def test_every_table_is_in_the_versioned_schema() -> None:
    creators = _files_matching(r"\bTable\(|CREATE TABLE|__tablename__")
    assert creators <= {"kvfs/catalog/models.py", "kvfs/catalog/schema.py"}


def test_no_tool_in_the_shipped_packages() -> None:
    tool_names = re.compile(r"(bench|e2e|demo|tracegen|gpu_check|oracle|replay_suite|ladder)")
    assert [name for name in modules(*SHIPPED) if tool_names.search(name.rpartition(".")[2])] == []
    assert _files_matching(r"^\s*(from|import) tools\b") == set()
