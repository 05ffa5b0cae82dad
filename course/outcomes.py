"""A pytest plugin for course/check.py: every test's exercise markers and outcome, as JSON.

    COURSE_OUTCOMES=out.json python -m pytest -p outcomes ...   (course/ on PYTHONPATH)

writes {node id: {"exercises": [1, 5], "outcome": "passed" | "failed" | "skipped",
"error": "ExceptionType: message" of the first failure, or ""}}.
"""

import json
import os
import re

import pytest

RESULTS = {}


def pytest_collection_finish(session):
    for item in session.items:  # the selected tests only (after -m)
        numbers = sorted({int(m.name[2:]) for m in item.iter_markers() if re.fullmatch(r"ex\d+", m.name)})
        RESULTS[item.nodeid] = {"exercises": numbers, "outcome": "not run", "error": ""}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    entry = RESULTS.setdefault(item.nodeid, {"exercises": [], "outcome": "not run", "error": ""})
    if call.excinfo is not None and not entry["error"] and not report.skipped:
        # the exception's own type: AssertionError for a test that caught a wrong result,
        # NotImplementedError for a blanked exercise, anything else for a crash
        entry["error"] = f"{call.excinfo.typename}: {str(call.excinfo.value)[:500]}"
    if report.failed:
        entry["outcome"] = "failed"
    elif report.skipped and entry["outcome"] != "failed":
        entry["outcome"] = "skipped"
    elif report.when == "call" and entry["outcome"] == "not run":
        entry["outcome"] = "passed"
    return report


def pytest_sessionfinish(session):
    with open(os.environ["COURSE_OUTCOMES"], "w") as f:
        json.dump(RESULTS, f, indent=1)
