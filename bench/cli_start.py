"""Start-up time: ``mmst --help`` against ``python -c "import sentence_transformers"``.

mmst promises that ``mmst --help`` starts instantly because the ML libraries are imported only when
a command runs. The baseline is the cost any tool built on Sentence Transformers pays before it can
do anything: importing it (which imports torch and transformers).

How: each side is a fresh process (the ``.venv/bin/mmst`` console script; the venv's python),
timed wall-clock from spawn to exit. One unmeasured warm-up run per side fills the page cache, then
the sides alternate (A B, B A, ...) for ``--repeats`` runs each; the table shows the medians and the
ratio mmst / baseline. Target: below 0.1.

    .venv/bin/python bench/cli_start.py [--repeats 7]
"""

from __future__ import annotations

from _common import (
    MMST,
    PYTHON,
    Row,
    common_arguments,
    interleaved,
    machine_description,
    median,
    parse_arguments,
    print_machine,
    report,
    run_child,
)

SIDES = {
    "mmst --help": [MMST, "--help"],
    "import sentence_transformers": [PYTHON, "-c", "import sentence_transformers"],
}
TARGET = ("<=", 0.1)


def main() -> None:
    args = parse_arguments(common_arguments(__doc__, repeats=7))
    machine = machine_description()
    print_machine(machine)
    for command in SIDES.values():  # warm-up: page cache, .pyc files
        run_child(command)
    times = interleaved({name: (lambda command=command: run_child(command).wall_s) for name, command in SIDES.items()},
                        args.repeats)
    mmst, baseline = (median(times[name]) for name in SIDES)
    rows = [Row("mmst --help wall time", mmst, baseline, "s", mmst / baseline, "mmst / baseline time", TARGET,
                extra={"mmst_runs": times["mmst --help"], "baseline_runs": times["import sentence_transformers"]})]
    report("CLI start-up", rows, ("mmst --help", "import sentence_transformers"), machine,
           {"repeats": args.repeats, "threads": args.threads}, args.json_path)


if __name__ == "__main__":
    main()
