"""The project's layout as the README's Files section states it: the import graph of the top-level
files has no cycle, the base files import nothing from the project, no library file imports a
script, and transformer.py knows token ids only (never vq.py). Read from the source, nothing run."""

import ast
import glob
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES = {os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "*.py"))}
SCRIPTS = {"train", "sample", "visualize", "bench", "study"}
BASE = {"machine", "vq", "losses", "transformer"}


def imports_of(module):
    """The project modules that a top-level file imports (anywhere in it)."""
    tree = ast.parse(open(os.path.join(ROOT, f"{module}.py")).read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & MODULES - {module}


def find_cycle(graph):
    """A list of modules that import each other round in a circle, or None."""
    state = {}

    def visit(m, path):
        state[m] = "open"
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                return path[path.index(n):] + [n]
            if n not in state and (cycle := visit(n, path + [n])):
                return cycle
        state[m] = "done"
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m, [m])):
            return cycle
    return None


def test_the_import_graph_has_no_cycle_and_points_one_way():
    graph = {m: imports_of(m) for m in MODULES}
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"
    for m in BASE:
        assert not graph[m], f"{m}.py imports {sorted(graph[m])}: the base files import nothing from the project"
    for m in MODULES - SCRIPTS:
        assert not graph[m] & SCRIPTS, f"library file {m}.py imports the script(s) {sorted(graph[m] & SCRIPTS)}"
    assert "vq" not in graph["transformer"]


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
