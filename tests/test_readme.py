"""The README names only code that exists, and only commands that parse: every `file.py`: `name`
(or `Class.method`) in its "Paper to code" table imports and resolves, and every `python X.py
...` command of the README and of docs/ parses with X.py's own argument parser (flags checked,
nothing run)."""

import glob
import importlib
import os
import re
import shlex

import pytest

from conftest import ROOT


def paper_to_code_names():
    """(module, dotted name) for every name the section's table cites after its `file.py`."""
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    section = text.split("## Paper to code", 1)[1].split("\n## ", 1)[0]
    names = []
    for row in (line for line in section.splitlines() if line.startswith("| ") and "`" in line):
        code = row.rstrip(" |").rsplit(" | ", 1)[-1]  # the last column
        # "`vq.py`: `A`, `B.c`; `train.py`: `d`" -> per file, the backticked names after it
        for module, names_part in re.findall(r"`(\w+)\.py`(?: --\w+)?:?([^;]*)", code):
            names += [(module, n) for n in re.findall(r"`([A-Za-z_][\w.]*)`", names_part)]
    return names


def test_every_name_in_the_paper_to_code_table_exists():
    names = paper_to_code_names()
    assert len(names) > 40  # the table was found and read
    for module, dotted in names:
        obj = importlib.import_module(module)
        for part in dotted.split("."):
            assert hasattr(obj, part), f"README names {module}.py: {dotted}, which does not exist"
            obj = getattr(obj, part)


def commands():
    """(file, line, script, argv) of every `python X.py ...` command in a code block of the README
    and docs/*.md (four-space indented lines, continued with a backslash; `&&` chains split and
    trailing comments dropped)."""
    out = []
    for path in [os.path.join(ROOT, "README.md"), *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]:
        lines = open(path, encoding="utf-8").read().splitlines()
        for n, line in enumerate(lines, 1):
            if not line.startswith("    ") or (n > 1 and lines[n - 2].endswith("\\")):
                continue
            while line.endswith("\\") and n < len(lines):  # a command continued on the next line
                line, n = line[:-1] + lines[n], n + 1
            for part in line.split("&&"):
                if not part.strip().startswith("python ") or ".py" not in part:
                    continue
                words = shlex.split(part, comments=True)
                if words[1].endswith(".py") and "/" not in words[1]:
                    out.append((os.path.relpath(path, ROOT), n, words[1][:-3], words[2:]))
    return out


@pytest.mark.parametrize("where, line, script, argv", commands(), ids=lambda v: str(v)[:60])
def test_every_documented_command_parses(where, line, script, argv):
    module = importlib.import_module(script)
    try:
        if script == "train":  # the presets, value checks and run names: what train.py checks before it starts
            module.settings(argv)
        else:
            module.get_parser().parse_args(argv)
    except (SystemExit, module.UserError if script == "train" else SystemExit) as e:
        pytest.fail(f"{where}:{line}: `python {script}.py {shlex.join(argv)}` is refused: {e}")
