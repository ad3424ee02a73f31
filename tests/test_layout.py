"""The package's layout: imports run one way, from the commands down through the core's wings.

Every ``import`` of an ``mmst_cli`` module counts, at module level or inside a function (the lazy
imports that keep ``mmst --help`` fast are still dependencies). See docs/architecture.md.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "mmst_cli"

#: Height of each layer: a module may import its own layer or a lower one, never a higher one.
LAYERS = {
    "mmst_cli.cli": 7,
    "mmst_cli.testing": 7,
    "mmst_cli.__main__": 7,
    "mmst_cli.core.train": 6,
    "mmst_cli.core.index": 5,
    "mmst_cli.core.report": 5,
    "mmst_cli.core.retrieval": 4,
    "mmst_cli.core.encode": 3,
    "mmst_cli.core.models": 2,
    "mmst_cli.core.data": 1,
    "mmst_cli.core.errors": 0,
    "mmst_cli.core.progress": 0,
    "mmst_cli.core": 0,
    "mmst_cli": 0,
}
#: The longest a core module may grow before it should be split along its seams.
MAX_CORE_MODULE_LINES = 600


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    prefix = max((name for name in LAYERS if module == name or module.startswith(name + ".")), key=len)
    return LAYERS[prefix]


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The ``mmst_cli`` modules ``path`` imports anywhere in its body (``from X import name`` counts
    ``X.name`` when that is a module, else ``X``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("mmst_cli"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mmst_cli"):
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in known else node.module)
    return found


@pytest.fixture(scope="module")
def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    known = {module_name(path) for path in paths}
    graph = {module_name(path): imported_modules(path, known) - {module_name(path)} for path in paths}
    unknown = {target for targets in graph.values() for target in targets} - known
    assert not unknown, f"imports of modules that do not exist: {sorted(unknown)}"
    return graph


def test_no_module_imports_from_a_higher_layer(import_graph):
    upward = [
        f"{source} ({layer(source)}) imports {target} ({layer(target)})"
        for source, targets in import_graph.items()
        for target in targets
        if layer(target) > layer(source)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_cycles(import_graph):
    cycles, state = [], {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = "open"
        for target in sorted(import_graph[module]):
            if state.get(target) == "open":
                cycles.append(" -> ".join([*trail[trail.index(target):], target]))
            elif target not in state:
                visit(target, [*trail, target])
        state[module] = "done"

    for module in sorted(import_graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(cycles)


def test_the_checks_see_a_violation(tmp_path):
    """The walk finds function-level imports, so a lazy upward import cannot slip through."""
    source = tmp_path / "mod.py"
    source.write_text("def f():\n    from mmst_cli.core.train.embed import TrainEmbedOptions\n", encoding="utf8")
    assert imported_modules(source, {"mmst_cli.core.train.embed"}) == {"mmst_cli.core.train.embed"}
    assert layer("mmst_cli.core.train.embed") > layer("mmst_cli.core.data.tables")


def test_core_modules_stay_small():
    large = {
        str(path.relative_to(PACKAGE.parent)): lines
        for path in (PACKAGE / "core").rglob("*.py")
        if (lines := len(path.read_text(encoding="utf8").splitlines())) > MAX_CORE_MODULE_LINES
    }
    assert not large, f"split these along their seams: {large}"
