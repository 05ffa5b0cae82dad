"""Grade the exercises: run the tests marked for each one, and an instructor's own tests.

    python course/grade.py                      # all six, one pytest run each, then a summary
    python course/grade.py 4                    # exercise 4: python -m pytest -m ex4 tests
    python course/grade.py 1 2 --extra-tests ~/hidden-tests   # and the tests there marked ex1, ex2

An instructor grading for credit adds tests of their own (the reference is public): put them in
a folder outside the repository, mark each one like the kit's (`@pytest.mark.ex4`; the markers
are registered in pytest.ini), and pass the folder with --extra-tests. They run as a second
pytest, with the repository on sys.path (`import vq` works), so file names may repeat the kit's.

Exit status 0 when every test run passes. Standard library only.
"""

import argparse
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from exercises import DEPENDS, EXERCISES, marker  # noqa: E402

ROOT = os.path.dirname(HERE)


def pytest(n: int, folder: str) -> int:
    """python -m pytest -m exN folder, the output to the terminal; pytest's exit status."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    cmd = [sys.executable, "-m", "pytest", "-q", "-c", os.path.join(ROOT, "pytest.ini"), "--rootdir", ROOT,
           "-m", marker(n), folder]
    print(f"$ python {' '.join(cmd[1:])}", flush=True)
    return subprocess.run(cmd, cwd=ROOT, env=env).returncode


def main(argv=None):
    args = get_parser().parse_args(argv)
    numbers = args.exercises or sorted(EXERCISES)
    unknown = sorted(set(numbers) - set(EXERCISES))
    if unknown:
        sys.exit(f"error: no exercise {unknown}: choose among {sorted(EXERCISES)}")
    if args.extra_tests and not os.path.isdir(args.extra_tests):
        sys.exit(f"error: --extra-tests {args.extra_tests} is not a folder")
    # pytest's exit status: 0 passed, 1 some failed, 5 none selected
    words = {0: "passed", 1: "FAILED", 5: "no test marked"}
    summary, ok = [], True
    for n in numbers:
        line = f"exercise {n} ({EXERCISES[n][0]}): {words.get(pytest(n, 'tests'), 'ERROR')}"
        ok &= line.endswith("passed")
        if args.extra_tests:
            code = pytest(n, os.path.abspath(args.extra_tests))
            line += f"; extra tests: {words.get(code, 'ERROR')}"
            ok &= code in (0, 5)
        if DEPENDS[n]:
            line += f" (its grade also runs exercise {', '.join(map(str, DEPENDS[n]))})"
        summary.append(line)
    print("\n" + "\n".join(summary))
    sys.exit(0 if ok else 1)


def get_parser():
    p = argparse.ArgumentParser(description="Run the graded tests of the exercises (markers ex1 ... ex6).")
    p.add_argument("exercises", type=int, nargs="*", help="exercise numbers (default: all)")
    p.add_argument("--extra-tests", metavar="DIR", help="a folder of the instructor's own tests, marked exN like the kit's")
    return p


if __name__ == "__main__":
    main()
