"""The layering STYLE.md asks for, guarded: no import cycles inside backend/ or plugin/
(module-level or lazy, a cycle is a design knot), and backend/ never imports plugin/."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def import_graph():
    modules = {}
    for package in ("backend", "plugin"):
        for path in (REPO / package).rglob("*.py"):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts)
            modules[name.removesuffix(".__init__")] = path
    graph = {}
    for name, path in modules.items():
        base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level:
                parts = base[:len(base) - node.level + 1]
                target = ".".join(parts + ([node.module] if node.module else []))
                deps.update(t for t in [target] + [f"{target}.{a.name}" for a in node.names] if t in modules)
        graph[name] = deps - {name}
    return graph


def find_cycle(graph):
    state = {}

    def visit(node, path):
        state[node] = "open"
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                return path[path.index(dep):] + [dep]
            if dep not in state:
                found = visit(dep, path + [dep])
                if found:
                    return found
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node, [node])
            if found:
                return found
    return None


def test_no_import_cycles():
    graph = import_graph()
    assert "backend.text.encoders" in graph and "plugin.algorithms.base" in graph  # the walk sees the tree
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]


def test_backend_never_imports_the_plugin():
    graph = import_graph()
    for name, deps in graph.items():
        if name.startswith("backend"):
            assert not [d for d in deps if d.startswith("plugin")], name


SUBPACKAGES = {"io", "data", "models", "training", "training/recipes", "mapping", "foundation", "text", "evaluation",
               "runtime"}
TOP_MODULES = {"__init__.py", "__main__.py", "api.py", "cli.py", "demo.py", "errors.py"}
MAX_LINES = 500


def test_backend_layout_shows_the_architecture():
    """backend/ is the entry points (api, cli, demo, errors) over one subpackage per concern;
    a new module goes into the subpackage of its concern, not beside the entry points."""
    backend = REPO / "backend"
    assert {p.name for p in backend.glob("*.py")} == TOP_MODULES
    packages = {str(p.parent.relative_to(backend)) for p in backend.rglob("__init__.py")} - {"."}
    assert packages == SUBPACKAGES
    for package in packages:  # each says what it holds
        assert ast.get_docstring(ast.parse((backend / package / "__init__.py").read_text(encoding="utf-8")))


def test_no_module_is_long_without_saying_why():
    long = []
    for package in ("backend", "plugin"):
        for path in (REPO / package).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            if text.count("\n") > MAX_LINES and "Long module:" not in (ast.get_docstring(ast.parse(text)) or ""):
                long.append(f"{path.relative_to(REPO)} ({text.count(chr(10))} lines)")
    assert not long, "split these or give the reason in the docstring ('Long module: …'): " + ", ".join(long)


def test_the_layout_checks_bite(tmp_path):
    """The cycle finder sees lazy imports too, and the layout walk sees every package."""
    graph = import_graph()
    assert "backend.foundation.zeroshot" in graph and "backend.io.windows" in graph["backend.foundation.zeroshot"]
    assert "backend.training.recipes.base" in graph
