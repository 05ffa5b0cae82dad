"""The course kit's self-check: every exercise's grade catches a missing or a wrong implementation.

    python course/check.py            # about 4 minutes on 2 cores; .ci/run runs it after the tests
    python course/check.py --jobs 1   # one pytest at a time
    python course/check.py --keep     # keep the variants it writes, to look at a failure
    python course/check.py --only 3   # the reference, exercise 3 blanked and its wrong bodies only

It writes variants of the repository (course/make_student.py, each one a student version with
the files git tracks or does not ignore) into a temporary folder and runs pytest in each:

  1. the reference, nothing blanked: the fast suite and every graded test pass;
  2. per exercise k, only k blanked: every test marked exk fails, with k's NotImplementedError;
     every graded test of an exercise that does not depend on k (exercises.DEPENDS) passes; and
     each dependency the map lists is real: some test of the dependent exercise fails;
  3. per plausible wrong implementation (course/wrong/*.txt, alternate bodies of regions):
     some test of its exercise fails on an assertion (not on a crash), the tests its `# expect:`
     lines name among them.

A blanked exercise that no test notices, a grade that needs an exercise the map does not list,
or a wrong implementation that passes, is a bug in the kit: the check fails and says which.
The full suite on the reference (`python -m pytest -q tests`) is .ci/run's line before this one.

Standard library only; pytest runs as a subprocess, with the plugin course/outcomes.py.
"""

import argparse
import concurrent.futures
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from exercises import DEPENDS, EXERCISES, dependents, marker  # noqa: E402
from make_student import ROOT, KitError, all_regions, write_version  # noqa: E402

GRADED = " or ".join(marker(n) for n in EXERCISES)  # every graded test
# a test that caught a wrong result (Failed: pytest.fail, DID NOT RAISE)
CAUGHT = ("AssertionError", "Failed")


def read_wrong(path: str) -> dict:
    """A wrong implementation: '# wrong:' what it is (comment lines right after it continue it),
    '# expect:' tests that must catch it, then one '# replaces: FILE::FUNCTION[#n]' line before
    each alternate region body."""
    wrong = {"name": os.path.basename(path)[:-len(".txt")], "what": "", "expect": [], "bodies": {}}
    current = None
    with open(path) as f:
        for line in f:
            if line.startswith("# replaces:"):
                current = line[len("# replaces:"):].strip()
                wrong["bodies"][current] = ""
            elif current is not None:
                wrong["bodies"][current] += line
            elif line.startswith("# wrong:"):
                wrong["what"] = line[len("# wrong:"):].strip()
            elif line.startswith("# expect:"):
                wrong["expect"].append(line[len("# expect:"):].strip())
            elif line.startswith("#") and wrong["what"] and not wrong["expect"]:
                wrong["what"] += " " + line[1:].strip()  # the '# wrong:' line, continued
    if not wrong["bodies"] or not wrong["what"]:
        raise KitError(f"{path}: needs a '# wrong:' line and at least one '# replaces:' section")
    return wrong


def graded_files(numbers) -> list:
    """The test files that mark tests for any of these exercises (pytest.mark.exN in their text):
    a run collects those only, which saves importing the rest."""
    out = []
    for path in sorted(glob.glob(os.path.join(ROOT, "tests", "test_*.py"))):
        with open(path) as f:
            text = f.read()
        if any(f"pytest.mark.{marker(n)}" in text for n in numbers):
            out.append(os.path.relpath(path, ROOT).replace(os.sep, "/"))
    return out


def run_pytest(folder: str, selection: str, files=()) -> tuple:
    """pytest -m selection [files] in folder -> ({node id: outcome entry}, seconds, output tail)."""
    out_json = os.path.join(folder, ".outcomes.json")
    env = {**os.environ, "COURSE_OUTCOMES": out_json, "PYTHONDONTWRITEBYTECODE": "1",
           "PYTHONPATH": os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "outcomes", "-m", selection,
           *files]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=900)
    seconds = time.time() - t0
    if not os.path.isfile(out_json):  # pytest itself failed (a variant that does not import, ...)
        return {}, seconds, (proc.stdout + proc.stderr)[-2000:]
    with open(out_json) as f:
        return json.load(f), seconds, proc.stdout[-2000:]


def short(node_id: str) -> str:
    return node_id.split("::", 1)[-1]


def named(results: dict, name: str) -> list:
    """The node ids an `# expect:` line names (a test function: all its parametrizations)."""
    return [t for t in results if t == name or t.startswith(name + "[")]


# ------------------------------------------------------------------------------------------
#### The three kinds of scenario; each returns (problems, one-line summary)
# ------------------------------------------------------------------------------------------


def check_reference(results: dict) -> tuple:
    problems = [f"reference fails {t}: {r['error'][:200]}" for t, r in results.items()
                if r["outcome"] == "failed"]
    for n in EXERCISES:
        if not any(n in r["exercises"] for r in results.values()):
            problems.append(f"no test is marked {marker(n)}: exercise {n} has no grade")
    for t, r in results.items():  # the other runs collect graded_files() only: none may be missed
        if r["exercises"] and t.split("::")[0] not in graded_files(r["exercises"]):
            problems.append(f"{t} is marked {r['exercises']} other than by pytest.mark.exN in its file")
    passed = sum(r["outcome"] == "passed" for r in results.values())
    graded = sum(bool(r["exercises"]) for r in results.values())
    return problems, f"{passed} of {len(results)} tests pass ({graded} graded)"


def check_blanked(k: int, results: dict) -> tuple:
    problems, needs_k = [], {k} | dependents(k)
    mine = {t: r for t, r in results.items() if k in r["exercises"]}
    for t, r in mine.items():
        if r["outcome"] != "failed":
            problems.append(f"exercise {k} blanked, yet {t} {r['outcome']}: it grades nothing of "
                            f"exercise {k}")
        elif not r["error"].startswith(f"NotImplementedError: exercise {k} ("):
            problems.append(f"exercise {k} blanked: {t} fails, but not with exercise {k}'s "
                            f"NotImplementedError ({r['error'][:160]})")
    independent = {t: r for t, r in results.items() if r["exercises"] and not set(r["exercises"]) & needs_k}
    for t, r in independent.items():
        if r["outcome"] != "passed":
            problems.append(f"exercise {k} blanked breaks {t} of exercise(s) {r['exercises']}, which do not "
                            f"depend on {k} in course/exercises.py: {r['error'][:160]}")
    for j in (j for j, deps in DEPENDS.items() if k in deps):
        if not any(j in r["exercises"] and r["outcome"] == "failed" for r in results.values()):
            problems.append(f"DEPENDS says exercise {j} needs {k}, but no test of {j} fails with {k} blanked")
    if not mine:
        problems.append(f"no test marked {marker(k)}")
    failed = sum(r["outcome"] == "failed" for r in mine.values())
    passed = sum(r["outcome"] == "passed" for r in independent.values())
    return problems, (f"{failed}/{len(mine)} of its tests fail; {passed}/{len(independent)} tests "
                      f"of the exercises that do not need it pass")


def check_wrong(wrong: dict, results: dict) -> tuple:
    problems = []
    caught = sorted(t for t, r in results.items()
                    if r["outcome"] == "failed" and r["error"].startswith(CAUGHT))
    crashed = sorted(t for t, r in results.items() if r["outcome"] == "failed" and t not in caught)
    if not caught:
        crashes = "; crashes: " + ", ".join(crashed) if crashed else ""
        problems.append(f"wrong implementation {wrong['name']} passes the grade of exercise "
                        f"{wrong['exercise']} (no assertion catches it{crashes})")
    for name in wrong["expect"]:
        ids = named(results, name)
        if not ids:
            problems.append(f"{wrong['name']}: expected test {name} is not graded under "
                            f"{marker(wrong['exercise'])}")
        for t in ids:
            if t not in caught:
                problems.append(f"{wrong['name']}: {t} should catch it, but it {results[t]['outcome']} "
                                f"{results[t]['error'][:120]}")
    names = sorted({short(t).split("[")[0] for t in caught})
    summary = f"caught by {len(caught)}/{len(results)}: {', '.join(names)}"
    return problems, summary + (f"; crashed: {', '.join(short(t) for t in crashed)}" if crashed else "")


# ------------------------------------------------------------------------------------------
#### Main
# ------------------------------------------------------------------------------------------


def static_problems(regions: list, wrongs: list) -> list:
    """What can be checked without running anything: markers registered, maps complete."""
    problems = []
    with open(os.path.join(ROOT, "pytest.ini")) as f:
        ini = f.read()
    for n in EXERCISES:
        if f"{marker(n)}:" not in ini:
            problems.append(f"pytest.ini does not register the marker {marker(n)}")
        if not any(r.exercise == n for r in regions):
            problems.append(f"exercise {n} has no region in the code")
        if not any(w["exercise"] == n for w in wrongs):
            problems.append(f"exercise {n} has no plausible wrong implementation in course/wrong/")
    if set(DEPENDS) != set(EXERCISES) or any(set(d) - set(EXERCISES) for d in DEPENDS.values()):
        problems.append("DEPENDS must list every exercise, with exercises only")
    return problems


def main(argv=None):
    args = get_parser().parse_args(argv)
    t_start = time.time()
    try:
        regions = {r.id: r for r in all_regions(ROOT, untracked=True)}
        wrongs = [read_wrong(p) for p in sorted(glob.glob(os.path.join(HERE, "wrong", "*.txt")))]
        for w in wrongs:
            unknown = [i for i in w["bodies"] if i not in regions]
            if unknown:
                raise KitError(f"course/wrong/{w['name']}.txt replaces {', '.join(unknown)}: no such region "
                               f"(known: {', '.join(regions)})")
            exercises = {regions[i].exercise for i in w["bodies"]}
            if len(exercises) != 1:
                raise KitError(f"course/wrong/{w['name']}.txt replaces regions of several exercises")
            w["exercise"] = exercises.pop()
    except KitError as e:
        sys.exit(f"error: {e}")
    problems = static_problems(list(regions.values()), wrongs)

    # every scenario: (label, blank, bodies, selection, test files, check)
    scenarios = [("reference", set(), {}, f"not slow or {GRADED}", [], check_reference)]
    only = set(args.only or EXERCISES)
    scenarios += [(f"exercise {k} blanked", {k}, {}, GRADED, graded_files(EXERCISES),
                   lambda res, k=k: check_blanked(k, res)) for k in EXERCISES if k in only]
    scenarios += [(f"wrong {w['name']}", set(), w["bodies"], marker(w["exercise"]),
                   graded_files([w["exercise"]]), lambda res, w=w: check_wrong(w, res))
                  for w in wrongs if w["exercise"] in only]

    work = tempfile.mkdtemp(prefix="course-check-")

    def run(i):
        label, blank, bodies, selection, files, check = scenarios[i]
        folder = os.path.join(work, f"{i:02d}")
        write_version(folder, blank=blank, bodies=bodies, untracked=True)
        results, seconds, tail = run_pytest(folder, selection, files)
        if not results:
            return [f"{label}: pytest did not run:\n{tail}"], "pytest did not run", seconds
        found, summary = check(results)
        return found, summary, seconds

    print(f"self-check of the course kit: {len(EXERCISES)} exercises, {len(regions)} regions, "
          f"{len(wrongs)} wrong implementations; {len(scenarios)} pytest runs, {args.jobs} at a time",
          flush=True)
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(run, i): i for i in range(len(scenarios))}
        done = {}
        for f in concurrent.futures.as_completed(futures):
            i = futures[f]
            done[i] = f.result()
            found, summary, seconds = done[i]
            mark = "ok  " if not found else "FAIL"
            print(f"  {mark} {scenarios[i][0]:<48} {summary} ({seconds:.0f} s)", flush=True)
            problems += found
    if args.keep:
        print(f"variants kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)

    wall = time.time() - t_start
    if problems:
        print(f"\nself-check FAILED ({len(problems)} problems, {wall:.0f} s):")
        for p in problems:
            print(f"  - {p}")
        sys.exit(1)
    print(f"self-check passed in {int(wall // 60)}m{wall % 60:04.1f}s")


def get_parser():
    p = argparse.ArgumentParser(
        description="Prove that every exercise's grade catches a blank or a wrong implementation.")
    p.add_argument("--jobs", type=int, default=2,
                   help="pytest runs at a time (default 2: one per core of a small CI box)")
    p.add_argument("--keep", action="store_true", help="keep the variants it writes, and print where")
    p.add_argument("--only", type=int, nargs="+",
                   help="check these exercises only (the reference is always run)")
    return p


if __name__ == "__main__":
    main()
