"""The shape of the imports: no cycle anywhere in the package, and a console that reaches the
world through the engine facade only, with every import at the top of its module."""

from __future__ import annotations

import ast
from pathlib import Path

import grimp
import pytest

import codeb_tui.tui

BELOW_THE_FACADE = ("codeb_tui.registry", "codeb_tui.store", "codeb_tui.infra")


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("codeb_tui")


def test_no_import_cycle(graph):
    """Every cycle, once: a direct import `a -> b` and a way back from b to a."""
    cycles: dict[frozenset[str], str] = {}
    for importer in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            back = graph.find_shortest_chain(importer=imported, imported=importer)
            if back is not None:
                cycles.setdefault(frozenset(back), " -> ".join((importer, *back)))
    assert not cycles, "import cycles:\n" + "\n".join(sorted(cycles.values()))


def test_the_console_imports_nothing_below_the_facade(graph):
    reaches = {
        (module, imported)
        for module in {"codeb_tui.tui"} | graph.find_descendants("codeb_tui.tui")
        for imported in graph.find_modules_directly_imported_by(module)
        if imported.startswith(BELOW_THE_FACADE)
    }
    assert not reaches, sorted(reaches)


def test_the_console_imports_at_module_level_only():
    """An import inside a function hides a dependency (it was how a cycle stayed alive)."""
    root = Path(codeb_tui.tui.__file__).parent
    inside = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                inside += [f"{path.relative_to(root)}:{sub.lineno}" for sub in ast.walk(node)
                           if isinstance(sub, (ast.Import, ast.ImportFrom))]
    assert not inside, inside
