"""README.md's "Paper to code" section names only code that exists: every `file.py`: `name`
(or `Class.method`) in its table imports and resolves."""

import importlib
import os
import re

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
