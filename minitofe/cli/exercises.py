"""The ``exercises`` subcommand: the notebooks' exercises, and grading a class's submissions with nothing
but minitofe (``minitofe.exercises.grading``; docs/teaching.md, "Grading").

    minitofe exercises list
    minitofe exercises grade SUBMISSIONS/ --out grades.csv [--timeout 60]
"""


def add_exercises(sub):
    p = sub.add_parser("exercises", help="the notebooks' exercises: list them, grade a class's "
                                         "notebooks")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True,
                               help="list: the exercises; grade: a folder of submissions")
    actions.add_parser("list", help="every exercise: notebook, functions, minutes, points")
    g = actions.add_parser("grade", help="run every student's exercise cells against the checks -> CSV",
                           description="SUBMISSIONS holds one folder per student with their notebooks (or "
                                       "one notebook per student). Each student's exercise cells run in a "
                                       "fresh kernel against minitofe's checks; the CSV has one row per "
                                       "student, one column per exercise (PASS, or FAIL and the first "
                                       "message), the points.")
    g.add_argument("submissions", help="folder of submissions")
    g.add_argument("--out", default="grades.csv", help="CSV to write (default grades.csv)")
    g.add_argument("--timeout", type=float, default=60.0, help="seconds per cell (default 60)")


def run_exercises(args):
    from ..exercises import EXERCISES
    if args.action == "list":
        print(f"{'exercise':22s} {'notebook':24s} {'minutes':>7s} {'points':>6s}  functions")
        for e in EXERCISES:
            print(f"{e.name:22s} {e.notebook:24s} {e.minutes:7d} {e.points:6d}  {', '.join(e.functions)}")
        print(f"{len(EXERCISES)} exercises, {sum(e.minutes for e in EXERCISES)} minutes, "
              f"{sum(e.points for e in EXERCISES)} points")
        return 0
    if not args.timeout > 0:
        raise ValueError(f"--timeout must be > 0 seconds, got {args.timeout}")
    try:
        import ipykernel, nbclient, nbformat  # noqa: F401  (the grader runs notebooks' cells in kernels)
    except ImportError as err:
        raise ImportError(f"minitofe exercises grade needs nbformat, nbclient and ipykernel ({err}): "
                          f"pip install 'minitofe[notebooks]'") from None
    from ..exercises.grading import grade_folder, points, write_csv
    total = sum(e.points for e in EXERCISES)

    def progress(student, results):
        passed = sum(v.passed for v in results.values())
        print(f"{student}: {passed} of {len(EXERCISES)} exercises pass, {points(results)} of {total} points")
    rows = grade_folder(args.submissions, timeout=args.timeout, progress=progress)
    write_csv(rows, args.out)
    print(f"wrote {args.out}: {len(rows)} students x {len(EXERCISES)} exercises")
    return 0
