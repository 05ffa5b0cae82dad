"""course/: the exercise markers are well formed, blanking them leaves valid Python, and bad
markers are refused with file and line. (Whether each grade catches a blank or a wrong body is
course/check.py's job: it runs pytest on variants and takes minutes.)"""

import ast
import os
import re
import sys

import pytest

from conftest import ROOT

COURSE = os.path.join(ROOT, "course")
if not os.path.isfile(os.path.join(COURSE, "make_student.py")):  # a copy without the instructor's kit
    pytest.skip("the course kit's instructor files are not in this copy", allow_module_level=True)
sys.path.insert(0, COURSE)
import check  # noqa: E402
import exercises  # noqa: E402
import make_student  # noqa: E402


def contracts(tree):
    return [(n.name, ast.unparse(n.args), ast.get_docstring(n)) for n in ast.walk(tree)
            if isinstance(n, ast.FunctionDef)]


def test_every_region_blanks_to_valid_python_that_keeps_the_contracts():
    regions = make_student.all_regions(ROOT, untracked=True)
    assert {r.exercise for r in regions} == set(exercises.EXERCISES)
    for path in sorted({r.path for r in regions}):
        text = open(os.path.join(ROOT, path)).read()
        mine = [r for r in regions if r.path == path]
        student = make_student.rewrite(text, mine, set(exercises.EXERCISES), {}, hints=True)
        tree = ast.parse(student)  # valid Python
        raises = [n for n in ast.walk(tree)
                  if isinstance(n, ast.Raise) and "yours to write" in ast.unparse(n)]
        assert len(raises) == len(mine), path
        # every function keeps its signature and docstring: the contract students write to
        assert contracts(tree) == contracts(ast.parse(text)), path
        # nothing blanked: the file comes back byte for byte
        assert make_student.rewrite(text, mine, set(), {}, hints=True) == text


BODY = '''def f(x):
    """Doc."""
{}
'''


@pytest.mark.parametrize("lines, error", [
    (["    # >>> exercise 1: the vector quantizer", "    return x"], "never closed"),
    (["    # >>> exercise 1: the vector quantizer", "    return x", "    # <<< exercise 2"], "must read"),
    (["    # >>> exercise 1: the vector quantizer", "    return x", "  # <<< exercise 1"], "must read"),
    (["    # >>> exercise 1: a title of its own", "    return x", "    # <<< exercise 1"], "is titled"),
    (["    # >>> exercise 9: nine", "    return x", "    # <<< exercise 9"], "names no exercise"),
    (["    return x", "    # <<< exercise 1"], "without a start marker"),
])
def test_bad_markers_are_refused_with_file_and_line(lines, error):
    with pytest.raises(make_student.KitError, match=error):
        make_student.find_regions("bad.py", BODY.format("\n".join(lines)))


def test_regions_outside_a_function_body_are_refused():
    module_level = "# >>> exercise 1: the vector quantizer\nX = 1\n# <<< exercise 1\n"
    with pytest.raises(make_student.KitError, match="inside a function body"):
        make_student.find_regions("bad.py", module_level)
    in_docstring_place = ('def f():\n    # >>> exercise 1: the vector quantizer\n    """Doc."""\n'
                          '    # <<< exercise 1\n')
    with pytest.raises(make_student.KitError, match="inside a function body"):
        make_student.find_regions("bad.py", in_docstring_place)


def test_every_wrong_implementation_names_regions_of_one_exercise():
    regions = {r.id: r for r in make_student.all_regions(ROOT, untracked=True)}
    folder = os.path.join(COURSE, "wrong")
    wrongs = [check.read_wrong(os.path.join(folder, f)) for f in sorted(os.listdir(folder))]
    assert {int(w["name"][2]) for w in wrongs} == set(exercises.EXERCISES)  # files are named exN_...
    for w in wrongs:
        assert set(w["bodies"]) <= set(regions), w["name"]
        assert {regions[i].exercise for i in w["bodies"]} == {int(w["name"][2])}, w["name"]
        assert w["expect"], f"{w['name']}: name the tests that must catch it"


def test_only_may_come_before_or_after_the_folder(tmp_path, capsys):
    # `--only 1 4 OUT` once swallowed the folder as a third exercise number (an argparse error)
    versions = {}
    for name, argv in (("before", ["--only", "1", "4", str(tmp_path / "before")]),
                       ("after", [str(tmp_path / "after"), "--only", "1", "4"])):
        make_student.main(argv)
        lines = capsys.readouterr().out.splitlines()
        blanked = [line.split(" (")[0] for line in lines if "blanked" in line]
        assert blanked == ["exercise 1", "exercise 4"], f"{argv} should blank exercises 1 and 4; got {lines}"
        files = ("vq.py", "losses.py", "transformer.py")
        versions[name] = {p: (tmp_path / name / p).read_text() for p in files}
    assert versions["before"] == versions["after"]
    window_partition = versions["before"]["vq.py"].split("def window_partition")[1].split("class ")[0]
    assert "exercise 3 (" not in window_partition  # exercise 3 kept: not blanked
    for argv in (["--only", "1", "4"], ["--only", str(tmp_path / "x")]):  # no folder; no exercise
        with pytest.raises(SystemExit):
            make_student.main(argv)


def test_the_student_readme_is_student_md_and_names_no_instructor_file(tmp_path):
    make_student.write_version(str(tmp_path / "s"))
    student = open(os.path.join(COURSE, "STUDENT.md"), encoding="utf-8").read()
    assert open(tmp_path / "s" / "README.md", encoding="utf-8").read() == student
    for rel in ["course/STUDENT.md", "tests/test_readme.py", *make_student.INSTRUCTOR_ONLY]:
        assert not os.path.exists(tmp_path / "s" / rel), f"{rel} should not be in the student version"
    for name in ("make_student", "check.py", "outcomes", "wrong/", "test_course", ".ci", "test_readme"):
        assert name not in student, f"course/STUDENT.md names {name!r}, which the student version lacks"


def test_the_student_readme_has_every_exercise_and_every_deviation_the_code_cites():
    """NotImplementedError sends the student to "README: Exercises, N" (in the student version that
    README is course/STUDENT.md) and the code's comments to "Deviation N" of docs/deviations.md."""
    student = open(os.path.join(COURSE, "STUDENT.md"), encoding="utf-8").read()
    sections = student.split("\n## Exercises\n", 1)[1].split("\n## ", 1)[0].split("\n### ")[1:]
    assert [s.split(".")[0] for s in sections] == [str(n) for n in exercises.EXERCISES]
    regions = make_student.all_regions(ROOT, untracked=True)
    for n, section in zip(exercises.EXERCISES, sections):
        heading = section.splitlines()[0]
        assert exercises.EXERCISES[n][0].lower() in heading.lower(), heading
        for path in {r.path for r in regions if r.exercise == n}:
            assert f"`{path}`" in heading, f"exercise {n}'s heading should name {path}: {heading}"
        assert f"python course/grade.py {n}" in section, f"exercise {n}'s section should say how to grade it"
    # every "Deviation N" the student's code (or STUDENT.md) cites is in docs/deviations.md, which
    # the student version holds
    cited = set(re.findall(r"Deviation (\d+)", student)) | set(re.findall(r"\b(\d+) \(", student.split(
        "## Deviations from the paper", 1)[1].split("\n## ", 1)[0]))
    for rel in make_student.tracked_files(ROOT, untracked=True):
        if rel.endswith(".py") and not rel.startswith("course/") and rel not in (
                "tests/test_course.py", "tests/test_readme.py"):
            with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
                cited |= set(re.findall(r"Deviation (\d+)", f.read()))
    deviations = open(os.path.join(ROOT, "docs", "deviations.md"), encoding="utf-8").read()
    listed = dict(re.findall(r"^(\d+)\. \*\*(.+?)\*\*", deviations, re.M))
    missing = sorted(set(cited) - set(listed), key=int)
    assert not missing, f"the code or STUDENT.md cites Deviations {missing}: docs/deviations.md lacks them"


def test_every_deviation_is_marked_in_the_code_where_it_happens():
    """The other direction: each entry of docs/deviations.md is cited as "Deviation N" in the code
    (the library and the scripts, not the tests or the course kit), where the choice is made."""
    deviations = open(os.path.join(ROOT, "docs", "deviations.md"), encoding="utf-8").read()
    listed = set(re.findall(r"^(\d+)\. \*\*", deviations, re.M))
    cited = set()
    for name in os.listdir(ROOT):
        if name.endswith(".py"):
            with open(os.path.join(ROOT, name), encoding="utf-8") as f:
                cited |= set(re.findall(r"Deviation (\d+)", f.read()))
    unmarked = sorted(listed - cited, key=int)
    assert not unmarked, f"docs/deviations.md lists Deviations {unmarked}, which no code marks where it happens"


@pytest.mark.slow
@pytest.mark.long
def test_a_student_with_exercise_5_done_samples_the_shipped_models(tmp_path):
    """`make_student.py --only 5`, exercise 5 solved (the reference's regions put back), then
    `python sample.py --ckpt pretrained/tiny-nar --tokenizer pretrained/tiny-tokenizer` in the
    student version: the shipped models are there, and the grid comes out."""
    import subprocess

    blank = tmp_path / "blank"
    make_student.main([str(blank), "--only", "5"])
    cmd = [sys.executable, "sample.py", "--ckpt", "pretrained/tiny-nar", "--tokenizer",
           "pretrained/tiny-tokenizer", "--device", "cpu", "--out", "grid.png"]
    out = subprocess.run(cmd, cwd=blank, capture_output=True, text=True)
    assert out.returncode != 0 and "exercise 5" in out.stderr, "exercise 5 blank: MaskGIT should not sample"
    solved = tmp_path / "solved"
    make_student.write_version(str(solved), blank=[])  # exercise 5 solved: the student version, nothing blank
    out = subprocess.run(cmd, cwd=solved, capture_output=True, text=True)
    assert out.returncode == 0, f"sample.py in the solved student version failed: {out.stderr[-500:]}"
    assert (solved / "grid.png").stat().st_size > 0
