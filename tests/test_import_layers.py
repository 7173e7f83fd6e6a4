"""The package's imports keep its layers: no cycle between modules, nothing imported upward.

Every `import` counts, inside functions and `TYPE_CHECKING` blocks too: a cycle hidden in a
function is still a cycle a newcomer has to hold in their head.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import lossbench

PACKAGE = Path(lossbench.__file__).parent

# Lowest first; a module may import from its own layer and the ones below it.
LAYERS: list[set[str]] = [
    {"errors", "atomic", "paths", "plugins", "checkpoints", "__init__"},
    {"data"},
    {"models", "losses"},
    {"evaluation"},
    {"training"},
    {"compare"},
    {"tuning", "reproduce"},
    {"api"},
    {"cli", "__main__"},
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, module: str, modules: set[str]) -> set[str]:
    """The lossbench modules `path` imports (a `from X import name` counts X.name when that is
    a module of the package, else X)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in modules else base)
    return {name for name in found if name == "lossbench" or name.startswith("lossbench.")}


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = defaultdict(set)
    for module, path in modules.items():
        imported = _imports(path, module, set(modules))
        graph[module] = {name for name in imported if name in modules} - {module}
    return graph


def _layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else "__init__"
    return next(index for index, names in enumerate(LAYERS) if top in names)


def test_every_module_has_a_layer() -> None:
    for module in _graph():
        _layer(module)  # StopIteration: a new top-level module needs a place in LAYERS


def test_nothing_is_imported_from_a_higher_layer() -> None:
    upward = sorted(
        f"{module} -> {target}"
        for module, targets in _graph().items()
        for target in targets
        if _layer(target) > _layer(module)
    )
    assert upward == []


def test_no_import_cycles() -> None:
    graph = _graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert [" -> ".join(cycle) for cycle in cycles] == []
