"""The project's layout as the README's Files section states it: the import graph of the top-level
files has no cycle, the base files import nothing from the project, no library file imports a
script, and transformer.py knows token ids only (never vq.py). Read from the source, nothing run."""

import ast
import glob
import io
import os
import tokenize

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


def comment_and_code_lines(source):
    """(comment lines, code lines) of a Python source: docstring lines and comment-only lines are
    comment lines; a code line with a trailing comment counts on both sides; blank lines on neither."""
    docstrings = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body \
                and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant) \
                and isinstance(node.body[0].value.value, str):
            docstrings.update(range(node.body[0].lineno, node.body[0].end_lineno + 1))
    comments, code = set(docstrings), set()
    layout = (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER)
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments.add(tok.start[0])
        elif tok.type not in layout:
            code.update(n for n in range(tok.start[0], tok.end[0] + 1) if n not in docstrings)
    return len(comments), len(code)


def test_no_file_has_more_comment_lines_than_code_lines():
    """Comments explain the code, they are not its history (that is CHANGELOG.md's): in every
    top-level file, at most as many comment lines as code lines."""
    for module in sorted(MODULES):
        comments, code = comment_and_code_lines(open(os.path.join(ROOT, f"{module}.py")).read())
        assert comments <= code, f"{module}.py has {comments} comment lines for {code} lines of code"


def test_the_comment_counter_counts_each_kind_of_line():
    source = '"""Two\nlines."""\n\n# one comment\nx = 1  # both\ny = (2,\n     3)\n'
    assert comment_and_code_lines(source) == (4, 3)


def test_train_py_reads_as_a_loop_no_lambda_partial_or_long_positional_calls():
    """train.py's loops call the loss and the helpers plainly: no lambda, no functools.partial, and no
    call with more than four positional arguments (the rest by keyword, so that a reader sees what each is)."""
    tree = ast.parse(open(os.path.join(ROOT, "train.py")).read())
    lambdas = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Lambda)]
    partials = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "partial"]
    long_calls = [(n.lineno, ast.unparse(n.func)) for n in ast.walk(tree)
                  if isinstance(n, ast.Call) and len(n.args) > 4]
    assert not lambdas and not partials, f"train.py lines {lambdas + partials}: a lambda or functools.partial"
    assert not long_calls, f"calls with more than four positional arguments: {long_calls}"
