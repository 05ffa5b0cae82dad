"""The course kit's exercises: what each one is, where the paper has it, how it is graded.

The reference code marks every exercise region with two plain comments, at the indentation of
the code they enclose (always inside a function body, after its signature and docstring):

    # >>> exercise 1: the vector quantizer
    ...the reference code...
    # <<< exercise 1

An exercise may have several regions, in several files. `make_student.py` replaces each region
by its comment lines (kept as hints) and a `raise NotImplementedError(MESSAGE)`, MESSAGE being
`message(n)` below. The tests that grade exercise n carry the pytest marker `exn`.

DEPENDS maps an exercise to the exercises whose code its graded tests also run: to pass
`-m ex2` you need exercise 1 done too (the total-loss test adds the quantizer's terms). An
exercise missing from another's list is one its grade never touches; `check.py` proves both
directions: blanking exercise k breaks no test of an exercise that does not depend on k, and
every dependency listed is one that some test really has.

Standard library only, like the rest of course/.
"""

# number -> (title, where in the paper); README "Exercises" says what each one asks for
EXERCISES = {
    1: ("the vector quantizer", "Eq. 1, Eq. 2 and Sec. 3.4"),
    2: ("the semantic-enhanced perceptual loss", "Eq. 3, Sec. 3.3.2"),
    3: ("regional and dilated window attention", "Sec. 3.3.1 and 3.4"),
    4: ("the GPT's KV cache", "Sec. 3.1, AR sampling"),
    5: ("MaskGIT: schedule, masked-only loss, iterative decoding", "Sec. 3.1, the NAR transformer of MaskGIT"),
    6: ("the GT-context predictions and token accuracy", "Sec. 3.2, Fig. 4"),
}

# exercise -> the exercises whose code its graded tests also run (see the docstring)
DEPENDS = {
    1: [],
    2: [1],  # tests/test_losses.py's total-loss test runs the quantizer
    3: [],
    4: [],
    5: [],
    6: [],  # the GT-context tests generate without the KV cache, so exercise 4 is not needed
}

START, END = "# >>> exercise ", "# <<< exercise "  # the markers, as they open a stripped line


def marker(n: int) -> str:
    """The pytest marker of exercise n: `python -m pytest -m ex4` grades exercise 4."""
    return f"ex{n}"


def message(n: int) -> str:
    """What a student's blanked region raises: the exercise, the paper, the README section."""
    title, paper = EXERCISES[n]
    return f"exercise {n} ({title}) is yours to write. Paper: {paper}. README: Exercises, {n}."


def dependents(k: int) -> set:
    """Every exercise whose grade needs exercise k, directly or through another one."""
    out, grew = set(), True
    while grew:
        new = {j for j, deps in DEPENDS.items() if (k in deps or out & set(deps)) and j not in out}
        out |= new
        grew = bool(new)
    return out
