"""The package's import graph (every `import nstlab…`, at module level or inside a function):
no circles, and the model stack imports one way: functional → encoders → losses → base → blocks →
methods."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "nstlab"


def module_name(path: Path) -> str:
    parts = ("nstlab", *path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the nstlab modules it imports (a `from package import name` counts the submodule
    `name` when there is one)."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names if alias.name in modules}
            elif isinstance(node, ast.ImportFrom) and node.module in modules:
                submodules = {f"{node.module}.{alias.name}" for alias in node.names} & modules.keys()
                targets |= submodules or {node.module}
        graph[name] = targets - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, …, a], or None."""
    state: dict[str, str] = {}  # "open" while on the DFS path, "done" after

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return path[path.index(target) :] + [target] if target in path else [node, target, node]
            if target not in state:
                found = visit(target, path + [target])
                if found:
                    return found
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start, [start])
            if found:
                return found
    return None


def test_find_cycle_sees_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_package_has_no_import_circle():
    graph = import_graph()
    assert {"nstlab.training.trainer", "nstlab.models.encoders", "nstlab.models.blocks"} <= graph.keys()
    assert graph["nstlab.models.blocks"] >= {
        "nstlab.models.encoders",
        "nstlab.losses",
    }  # the graph sees imports
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


# The model stack, lowest first: each imports none of the modules above it, nor a method's.
MODEL_STACK = (
    "nstlab.functional",
    "nstlab.models.encoders",
    "nstlab.losses",
    "nstlab.models.base",
    "nstlab.models.blocks",
)


def test_the_model_stack_imports_one_way():
    """Pure math, then the frozen encoders, then the losses that read them, then the shared blocks:
    none of them imports a layer above it or any method's module."""

    graph = import_graph()
    methods = {name for name in graph if name.startswith("nstlab.models")} - set(MODEL_STACK)
    for level, name in enumerate(MODEL_STACK):
        upward = graph[name] & (set(MODEL_STACK[level + 1 :]) | methods)
        assert not upward, f"{name} imports {sorted(upward)}"


def test_settings_and_checkpoints_do_not_import_model_code():
    graph = import_graph()
    for name in ("nstlab.config.gatys", "nstlab.training.checkpoint", "nstlab.report.gatys", "nstlab.config"):
        assert not {target for target in graph[name] if target.startswith("nstlab.models")}, name
