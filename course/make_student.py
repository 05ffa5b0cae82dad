"""Write the student version of this repository: every exercise region blanked.

    python course/make_student.py OUT_DIR                # all six exercises
    python course/make_student.py OUT_DIR --only 1 5     # just these (--only 1 5 OUT_DIR works too)
    python course/make_student.py OUT_DIR --no-hints     # drop the comment lines of each region too

Copies the files git tracks (`git ls-files`; without git, the tree minus what .gitignore names)
and, in every Python file, replaces each region between

    # >>> exercise N: title
    # <<< exercise N

by its comment lines (hints: the equations and steps, as the reference writes them) and a
`raise NotImplementedError(...)` at the region's indentation, whose message names the
exercise, the paper's equation or section and the README section (course/exercises.py). The
markers stay, so students see where to write. Signatures and docstrings are outside the
regions, and regions live inside function bodies only, so the student version imports and
every unblanked test runs.

The student version's README.md is course/STUDENT.md, written for the student (the exercises in
order, how to grade them, what to run when all pass); the reference's README.md, which also
documents this kit, is not copied, nor its test (tests/test_readme.py), nor STUDENT.md itself.
Left out too: what only an instructor needs (the self-check, this script, the wrong
implementations, the kit's own tests, the project's CI, which would run the self-check).

course/check.py imports `find_regions` and `write_version` to build its variants: one exercise
blanked, or one region replaced by a plausible wrong body from course/wrong/.

Standard library only.
"""

import argparse
import ast
import fnmatch
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from exercises import END, EXERCISES, START, message  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# files and folders (relative, "/" separated) that stay with the instructor
INSTRUCTOR_ONLY = ["course/make_student.py", "course/check.py", "course/outcomes.py", "course/wrong/", ".ci/",
                   "tests/test_course.py", "course/README.md"]
# the student version's README.md is this file's text; the reference's README.md and its test stay out
STUDENT_README = "course/STUDENT.md"
REFERENCE_README = ["README.md", "tests/test_readme.py", STUDENT_README]


@dataclass
class Region:
    """One marked region: lines start..end (0-based, the two marker lines included)."""
    path: str  # relative to the repository root
    start: int
    end: int
    exercise: int
    title: str
    indent: str
    function: str  # qualified name of the function it sits in, e.g. "Block.attention"
    index: int = 0  # 1, 2, ... when its function holds several regions, else 0

    @property
    def id(self) -> str:
        """How course/wrong/ names a region: vq.py::VectorQuantizer.forward,
        transformer.py::Block.attention#2."""
        return f"{self.path}::{self.function}" + (f"#{self.index}" if self.index else "")


class KitError(Exception):
    """A mistake in the markers or in a wrong implementation, with file and line."""


# ------------------------------------------------------------------------------------------
#### Which files, which regions
# ------------------------------------------------------------------------------------------


def tracked_files(root: str, untracked: bool = False) -> list:
    """Relative paths of the repository's files: git's list (with untracked=True, also the files
    git does not ignore but has not been told about), or, without git, a walk that honours
    .gitignore. The student version takes tracked files only: nothing lying around leaks into it."""
    try:
        extra = ["--others", "--exclude-standard"] if untracked else []
        out = subprocess.run(["git", "ls-files", "-z", "--cached", *extra], cwd=root, capture_output=True,
                             check=True)
        files = [f for f in out.stdout.decode().split("\0") if f]
        # deleted, not yet committed: gone
        return sorted(set(f for f in files if os.path.isfile(os.path.join(root, f))))
    except (OSError, subprocess.CalledProcessError):
        pass
    ignore = [".git"]
    if os.path.isfile(os.path.join(root, ".gitignore")):
        with open(os.path.join(root, ".gitignore")) as f:
            ignore += [line.strip().rstrip("/") for line in f if line.strip() and not line.startswith("#")]
    files = []
    for d, dirs, names in os.walk(root):
        dirs[:] = sorted(x for x in dirs if not any(fnmatch.fnmatch(x, p) for p in ignore))
        for name in sorted(names):
            if not any(fnmatch.fnmatch(name, p) for p in ignore):
                files.append(os.path.relpath(os.path.join(d, name), root).replace(os.sep, "/"))
    return files


def functions(tree) -> list:
    """(qualified name, first body line, last line, 1-based) of every function in a module."""
    out = []

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = child.body
                # the body proper starts after the docstring, if there is one
                has_doc = (isinstance(body[0], ast.Expr)
                           and isinstance(getattr(body[0], "value", None), ast.Constant)
                           and isinstance(body[0].value.value, str))
                first = body[0].end_lineno + 1 if has_doc else child.lineno + 1
                out.append((prefix + child.name, first, child.end_lineno))
                visit(child, prefix + child.name + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".")

    visit(tree, "")
    return out


def find_regions(path: str, text: str) -> list:
    """The exercise regions of one Python file (path relative to the root), checked: markers in
    pairs at one indentation, inside a function body after its docstring, nothing less indented."""
    lines = text.splitlines()
    if not any(line.lstrip().startswith((START, END)) for line in lines):
        return []
    funcs = functions(ast.parse(text, filename=path))
    regions, open_ = [], None
    for i, line in enumerate(lines):
        stripped = line.lstrip()
        where = f"{path}:{i + 1}"
        if stripped.startswith(START):
            if open_ is not None:
                raise KitError(f"{where}: exercise region opened inside another (opened at line "
                               f"{open_[0] + 1})")
            number, _, title = stripped[len(START):].partition(":")
            if not number.strip().isdigit() or int(number) not in EXERCISES:
                raise KitError(f"{where}: {stripped!r} names no exercise of course/exercises.py")
            if title.strip() != EXERCISES[int(number)][0]:
                raise KitError(f"{where}: exercise {int(number)} is titled {EXERCISES[int(number)][0]!r} in "
                               f"course/exercises.py")
            open_ = (i, int(number), title.strip(), line[:len(line) - len(stripped)])
        elif stripped.startswith(END):
            if open_ is None:
                raise KitError(f"{where}: end marker without a start marker")
            start, number, title, indent = open_
            if stripped[len(END):].strip() != str(number) or line[:len(line) - len(stripped)] != indent:
                raise KitError(f"{where}: must read {indent + END}{number}, at the indentation of line "
                               f"{start + 1}")
            for j in range(start + 1, i):
                if lines[j].strip() and not lines[j].startswith(indent):
                    raise KitError(f"{path}:{j + 1}: less indented than its region's markers")
            # the innermost function whose body (after the docstring) holds the start marker; the
            # indentation check above keeps the rest of the region inside that body too
            inside = [f for f in funcs if f[1] <= start + 1 <= f[2]]
            if not inside:
                raise KitError(f"{path}:{start + 1}: a region must sit inside a function body, after the "
                               f"docstring")
            name = max(inside, key=lambda f: f[1])[0]
            regions.append(Region(path, start, i, number, title, indent, name))
            open_ = None
    if open_ is not None:
        raise KitError(f"{path}:{open_[0] + 1}: region never closed")
    for r in regions:  # number the regions of a function that holds several
        same = [q for q in regions if q.function == r.function]
        if len(same) > 1:
            r.index = same.index(r) + 1
    return regions


def all_regions(root: str = ROOT, untracked: bool = False) -> list:
    """Every region of every Python file of the repository."""
    out = []
    for rel in tracked_files(root, untracked):
        if rel.endswith(".py") and not rel.startswith("course/"):
            with open(os.path.join(root, rel)) as f:
                out += find_regions(rel, f.read())
    return out


# ------------------------------------------------------------------------------------------
#### Writing a version
# ------------------------------------------------------------------------------------------


def blanked(lines: list, r: Region, hints: bool) -> list:
    """The lines between a region's markers in the student version: its comment lines (hints),
    all at the region's indentation, then the raise."""
    keep = [r.indent + line.lstrip() for line in lines[r.start + 1:r.end]
            if hints and line.lstrip().startswith("#")]
    return keep + [f"{r.indent}raise NotImplementedError({message(r.exercise)!r})"]


def replaced(body: str, r: Region) -> list:
    """An alternate body (course/wrong/), at the region's indentation."""
    return [r.indent + line if line.strip() else ""
            for line in textwrap.dedent(body).strip("\n").splitlines()]


def rewrite(text: str, regions: list, blank: set, bodies: dict, hints: bool) -> str:
    """One file's text with the regions of the exercises in `blank` blanked and the regions named
    in `bodies` ({region id: body}) replaced; markers kept, the rest byte for byte."""
    lines = text.splitlines()
    out, i = [], 0
    for r in regions:
        out += lines[i:r.start + 1]  # up to and including the start marker
        if r.id in bodies:
            out += replaced(bodies[r.id], r)
        elif r.exercise in blank:
            out += blanked(lines, r, hints)
        else:
            out += lines[r.start + 1:r.end]
        i = r.end  # the end marker comes next
    out += lines[i:]
    return "\n".join(out) + ("\n" if text.endswith("\n") else "")


def write_version(out_dir: str, blank=None, bodies=None, hints=True, root: str = ROOT,
                  untracked=False) -> dict:
    """Copy the repository to out_dir without the instructor's files, with course/STUDENT.md as its
    README.md, blanking the exercises in `blank` (default: all) and replacing the regions in
    `bodies`. Returns {exercise: number of regions blanked}."""
    blank = set(EXERCISES) if blank is None else set(blank)
    bodies = dict(bodies or {})
    counts = {n: 0 for n in sorted(blank)}
    seen = set()
    files = tracked_files(root, untracked)
    if STUDENT_README not in files:
        raise KitError(f"{STUDENT_README} is missing: it becomes the student version's README.md")
    os.makedirs(out_dir, exist_ok=True)
    shutil.copy2(os.path.join(root, STUDENT_README), os.path.join(out_dir, "README.md"))
    left_out = INSTRUCTOR_ONLY + REFERENCE_README
    for rel in files:
        if any(rel == p or (p.endswith("/") and rel.startswith(p)) for p in left_out):
            continue
        src, dst = os.path.join(root, rel), os.path.join(out_dir, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        regions = []
        if rel.endswith(".py") and not rel.startswith("course/"):
            with open(src) as f:
                text = f.read()
            regions = find_regions(rel, text)
        if not regions:
            shutil.copy2(src, dst)
            continue
        with open(dst, "w") as f:
            f.write(rewrite(text, regions, blank, bodies, hints))
        shutil.copymode(src, dst)
        for r in regions:
            seen.add(r.id)
            if r.exercise in blank and r.id not in bodies:
                counts[r.exercise] += 1
    unknown = set(bodies) - seen
    if unknown:
        raise KitError(f"no region named {', '.join(sorted(unknown))}")
    return counts


# ------------------------------------------------------------------------------------------
#### Command line
# ------------------------------------------------------------------------------------------


def main(argv=None):
    parser = get_parser()
    args = parser.parse_args(argv)
    # `--only 1 4 OUT`: nargs="+" takes the folder as one more exercise; give it back
    if args.out_dir is None and args.only and not args.only[-1].isdigit():
        args.out_dir = args.only.pop()
    if args.out_dir is None:
        parser.error("the following arguments are required: out_dir")
    if args.only is not None:
        if not args.only or not all(n.isdigit() for n in args.only):
            parser.error(f"--only takes exercise numbers, got {' '.join(args.only) or 'none'}")
        args.only = [int(n) for n in args.only]
    out = os.path.abspath(args.out_dir)
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        sys.exit(f"error: {args.out_dir} exists and is not an empty folder: pick a new one")
    if os.path.commonpath([out, ROOT]) == ROOT:
        sys.exit(f"error: {args.out_dir} is inside the repository: write the student version elsewhere")
    unknown = set(args.only or []) - set(EXERCISES)
    if unknown:
        sys.exit(f"error: no exercise {sorted(unknown)}: choose among {sorted(EXERCISES)}")
    try:
        counts = write_version(out, blank=args.only, hints=not args.no_hints)
    except KitError as e:
        sys.exit(f"error: {e}")
    for n, k in counts.items():
        print(f"exercise {n} ({EXERCISES[n][0]}): {k} region{'s' * (k != 1)} blanked")
    print(f"student version written to {out}; grade with `python course/grade.py` there")


def get_parser():
    p = argparse.ArgumentParser(description="Write the student version: exercise regions blanked.")
    p.add_argument("out_dir", nargs="?", help="a new (or empty) folder outside the repository")
    p.add_argument("--only", nargs="+", metavar="N", help="blank these exercises only (default: all)")
    p.add_argument("--no-hints", action="store_true", help="drop the comment lines inside each region too")
    return p


if __name__ == "__main__":
    main()
