"""Helpers every benchmark shares: the machine description, timing, child processes, peak memory, tables.

Benchmarks compare mmst (side A) with a plain Sentence Transformers / library baseline (side B)
measured side by side in one run, alternating A B / B A so that drift on a shared machine (other
jobs, thermal state, page cache) hits both sides alike. Each reports medians over a few repeats and
the ratio, against a target, as PASS / MISS.

Peak memory is the peak resident set size (``VmHWM`` in ``/proc/self/status``) of a fresh child
process, which reports it itself. ``os.wait4``'s ``ru_maxrss`` is not used: Python starts children
with ``vfork``, and Linux carries the parent's peak RSS over into the child's ``ru_maxrss`` at
``exec``, so the number would include the benchmark driver's own memory.

This module imports nothing heavy (no torch, numpy or mmst), so drivers that only start child
processes stay small.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
PYTHON = sys.executable
#: The console script next to this interpreter (``.venv/bin/mmst``).
MMST = str(Path(sys.executable).with_name("mmst"))


def bench_env(**extra: str) -> dict[str, str]:
    """The environment for child processes: offline, no tqdm bars, plus ``extra``."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TQDM_DISABLE="1", TOKENIZERS_PARALLELISM="false")
    env.update(extra)
    return env


# ------------------------------------------------------------------------------------------ machine


def _proc_field(path: str, key: str) -> str | None:
    """The value of ``key: value`` in a /proc file (the first such line), or ``None``."""
    try:
        for line in Path(path).read_text().splitlines():
            name, _, value = line.partition(":")
            if name.strip() == key:
                return value.strip()
    except OSError:
        pass
    return None


_TORCH_PROBE = (
    "import json, torch, sentence_transformers, transformers; "
    "print(json.dumps({'torch': torch.__version__, 'torch_threads': torch.get_num_threads(), "
    "'sentence_transformers': sentence_transformers.__version__, 'transformers': transformers.__version__}))"
)


def machine_description() -> dict[str, Any]:
    """CPU model, cores, load, library versions and torch's thread count (read in a child process,
    so that a driver which never imports torch does not have to)."""
    libraries = json.loads(
        subprocess.run([PYTHON, "-c", _TORCH_PROBE], capture_output=True, text=True, check=True, env=bench_env()).stdout
    )
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _proc_field("/proc/cpuinfo", "model name") or platform.processor() or "unknown",
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "memory_gib": round(int(_proc_field("/proc/meminfo", "MemTotal").split()[0]) / 2**20, 1),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        **libraries,
        "gpu": "none used (CPU only)",
    }


def print_machine(description: dict[str, Any]) -> None:
    print("machine: " + ", ".join(f"{key}={value}" for key, value in description.items()), flush=True)


# ------------------------------------------------------------------------------------------- timing


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def timed(function: Callable[[], Any]) -> tuple[float, Any]:
    """``(seconds, result)`` of one call, by ``time.perf_counter``."""
    started = time.perf_counter()
    result = function()
    return time.perf_counter() - started, result


def interleaved(sides: dict[str, Callable[[], Any]], repeats: int, log: bool = True) -> dict[str, list[Any]]:
    """Call each side ``repeats`` times, alternating the order (A B, B A, A B, ...); results per side."""
    names = list(sides)
    results: dict[str, list[Any]] = {name: [] for name in names}
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else reversed(names):
            results[name].append(sides[name]())
            if log:
                print(f"  repeat {repeat + 1}/{repeats} {name}: {_short(results[name][-1])}", flush=True)
    return results


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{key}={_short(item)}" for key, item in value.items() if not isinstance(item, (list, dict)))
    return str(value)


# ---------------------------------------------------------------------------------- child processes


@dataclass
class Child:
    """A finished child process: exit status, output, wall time, and its peak RSS when it reported one."""

    returncode: int
    stdout: str
    stderr: str
    wall_s: float
    peak_rss_mib: float | None = None

    def json(self) -> Any:
        """Stdout as JSON (``mmst --json``), or else its last line (benchmark children print results last)."""
        try:
            return json.loads(self.stdout)
        except json.JSONDecodeError:
            return json.loads(self.stdout.strip().splitlines()[-1])


def run_child(cmd: Sequence[str], *, env: dict[str, str] | None = None, cwd: str | Path | None = None,
              timeout: float | None = None, check: bool = True) -> Child:
    """Run ``cmd`` to completion and time it; raise with its stderr tail when it fails and ``check``."""
    started = time.perf_counter()
    done = subprocess.run(
        list(cmd), env=env or bench_env(), cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    child = Child(done.returncode, done.stdout, done.stderr, time.perf_counter() - started)
    if check and done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"{' '.join(map(str, cmd))[:300]} failed with exit status {done.returncode}:\n{tail}")
    return child


#: Runs the mmst console script's entry point in this interpreter, with the measuring hooks that
#: the environment asks for: $BENCH_PEAK_FILE receives the peak RSS (MiB) at exit, and
#: $BENCH_STEP_FILE the trainer's step times (see :func:`install_step_timer`).
_MMST_WRAPPER = f"""
import atexit, os, sys
sys.path.insert(0, {str(BENCH_DIR)!r})
import _common
if os.environ.get("BENCH_PEAK_FILE"):
    atexit.register(lambda: open(os.environ["BENCH_PEAK_FILE"], "w").write(str(_common.peak_rss_mib())))
if os.environ.get("BENCH_STEP_FILE"):
    _common.install_step_timer(os.environ["BENCH_STEP_FILE"])
sys.argv = ["mmst", *sys.argv[1:]]
from mmst_cli.cli.app import main
main()
"""


def run_mmst(args: Sequence[str], *, measure_peak: bool = False, step_file: str | Path | None = None,
             **kwargs: Any) -> Child:
    """Run ``mmst ARGS`` in a fresh process: the console script, or (to measure its peak RSS or the
    trainer's step times into ``step_file``) its entry point under a small wrapper."""
    if not measure_peak and step_file is None:
        return run_child([MMST, *args], **kwargs)
    env = dict(kwargs.pop("env", None) or bench_env())
    with tempfile.NamedTemporaryFile(suffix=".peak") as peak_file:
        if measure_peak:
            env["BENCH_PEAK_FILE"] = peak_file.name
        if step_file is not None:
            env["BENCH_STEP_FILE"] = str(step_file)
        child = run_child([PYTHON, "-c", _MMST_WRAPPER, *args], env=env, **kwargs)
        text = Path(peak_file.name).read_text().strip()
        child.peak_rss_mib = float(text) if text else None
    return child


def run_self_child(script: str | Path, args: Sequence[str], **kwargs: Any) -> Child:
    """Run a benchmark script's child mode (``python SCRIPT ARGS``); it prints a JSON line last."""
    child = run_child([PYTHON, str(script), *args], **kwargs)
    payload = child.json()
    if isinstance(payload, dict) and "peak_rss_mib" in payload:
        child.peak_rss_mib = payload["peak_rss_mib"]
    return child


# ------------------------------------------------------------------------------------------- memory


def _status_kib(field_name: str) -> int:
    value = _proc_field("/proc/self/status", field_name)
    if value is None:
        raise RuntimeError(f"/proc/self/status has no {field_name} (not Linux?)")
    return int(value.split()[0])


def rss_mib() -> float:
    """This process' resident set size now."""
    return _status_kib("VmRSS") / 1024


def peak_rss_mib() -> float:
    """This process' peak resident set size (since start, or since :func:`reset_peak_rss`)."""
    return _status_kib("VmHWM") / 1024


def reset_peak_rss() -> bool:
    """Reset the peak RSS to the current RSS (Linux ``clear_refs`` 5); ``False`` when not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True



def measure_computation(compute: Callable[[], Any]) -> dict[str, Any]:
    """Time ``compute()`` and its peak RSS above the RSS now (its inputs already in memory).

    Returns ``seconds``, ``peak_rss_mib``, ``rss_before_mib``, ``extra_mib``, ``peak_was_reset`` and
    ``result`` (what ``compute`` returned).
    """
    before = rss_mib()
    reset = reset_peak_rss()
    seconds, result = timed(compute)
    peak = peak_rss_mib()
    return {"seconds": round(seconds, 3), "peak_rss_mib": round(peak, 1), "rss_before_mib": round(before, 1),
            "extra_mib": round(peak - before, 1), "peak_was_reset": reset, "result": result}


# ------------------------------------------------------------------------------------- step timing


def install_step_timer(path: str | Path) -> None:
    """Record the time of every optimiser step of every ``transformers.Trainer.train()`` in this
    process, and write the step-to-step intervals as JSON to ``path`` at the end:
    ``{"wall": [seconds, ...], "cpu": [CPU seconds of the whole process, all its threads, ...]}``.

    The interval between two consecutive ``on_step_end`` events is one whole training step as the
    trainer runs it: fetching and collating the batch, forward, backward, optimiser, logging and
    every callback (a progress bar included). The first step (warm-up) and the checkpoint written
    after the last step fall outside the intervals. CPU time is far less disturbed than wall time
    by other jobs on a shared machine (with one torch thread; with several, threads that wait for
    a descheduled sibling spin and burn CPU time too). Patching ``Trainer.train`` adds the same
    instrument to any trainer, mmst's or a plain script's, without touching their code.
    """
    from transformers import Trainer, TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.ends: list[tuple[float, float]] = []

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append((time.perf_counter(), time.process_time()))

        def on_train_end(self, args, state, control, **kwargs):
            pairs = list(zip(self.ends, self.ends[1:]))
            Path(path).write_text(json.dumps({
                "wall": [later[0] - earlier[0] for earlier, later in pairs],
                "cpu": [later[1] - earlier[1] for earlier, later in pairs],
            }))

    original = Trainer.train

    def train(self, *args: Any, **kwargs: Any):
        self.add_callback(StepTimer())
        return original(self, *args, **kwargs)

    Trainer.train = train


def read_step_intervals(path: str | Path) -> dict[str, list[float]]:
    """What :func:`install_step_timer` wrote: ``{"wall": [...], "cpu": [...]}``, one per step after the first."""
    return json.loads(Path(path).read_text())


# ------------------------------------------------------------------------------------------ results


@dataclass
class Row:
    """One line of a result table.

    Attributes:
        name: What is compared.
        mmst / baseline: The two measured values (medians), in ``unit``.
        ratio: mmst relative to the baseline, oriented as the target reads (see ``ratio_note``).
        target: ``("<=", 0.1)``, ``(">=", 0.97)``, or ``None`` for information only.
    """

    name: str
    mmst: float
    baseline: float
    unit: str
    ratio: float
    ratio_note: str
    target: tuple[str, float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        if self.target is None:
            return "info"
        operator, bound = self.target
        return "PASS" if (self.ratio <= bound if operator == "<=" else self.ratio >= bound) else "MISS"


def print_table(title: str, rows: Sequence[Row], columns: tuple[str, str]) -> None:
    """The final table: both values (headed by ``columns``), ratio, target and PASS / MISS."""
    headers = ["comparison", *columns, "ratio", "ratio is", "target", "verdict"]
    lines = [
        [
            row.name,
            f"{row.mmst:.4g} {row.unit}",
            f"{row.baseline:.4g} {row.unit}",
            f"{row.ratio:.3f}",
            row.ratio_note,
            f"{row.target[0]} {row.target[1]:g}" if row.target else "-",
            row.verdict,
        ]
        for row in rows
    ]
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *lines)]
    print(f"\n== {title}")
    for cells in [headers, ["-" * width for width in widths], *lines]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(cells, widths)).rstrip())
    print(flush=True)


#: ``help=`` of the options that only a benchmark's own child processes pass.
HIDDEN = argparse.SUPPRESS


def common_arguments(description: str, repeats: int) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark has: ``--repeats``, ``--threads``, ``--json``."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=repeats, help=f"measurements per side (default {repeats})")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch (OpenMP) threads for both sides, here and in child processes; 0 keeps torch's default "
             "(one per core). Default 1: on a machine shared with other jobs, OpenMP threads that wait for a "
             "descheduled sibling spin, and step times swing 20x; one thread gives stable, comparable numbers",
    )
    parser.add_argument("--json", dest="json_path", help="also write the machine, settings and rows to this JSON file")
    return parser


def parse_arguments(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Parse, and apply ``--threads`` before torch is imported (torch reads OMP_NUM_THREADS once)."""
    args = parser.parse_args()
    if args.threads > 0:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[name] = str(args.threads)
    return args


@dataclass
class Table:
    """A titled result table; ``columns`` heads the two value columns (side A, side B)."""

    title: str
    rows: Sequence[Row]
    columns: tuple[str, str]


def report(title: str, rows: Sequence[Row], columns: tuple[str, str], machine: dict[str, Any],
           settings: dict[str, Any], json_path: str | None) -> None:
    """Print one final table; write it with the machine and settings as JSON when asked."""
    report_tables([Table(title, rows, columns)], machine, settings, json_path)


def report_tables(tables: Sequence[Table], machine: dict[str, Any], settings: dict[str, Any],
                  json_path: str | None) -> None:
    """Print the final tables; write them with the machine and settings as JSON when asked."""
    for table in tables:
        print_table(table.title, table.rows, table.columns)
    if json_path:
        payload = {"machine": machine, "settings": settings, "tables": [
            {"title": table.title, "columns": table.columns,
             "rows": [{**asdict(row), "verdict": row.verdict} for row in table.rows]}
            for table in tables
        ]}
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(payload, indent=2) + "\n")
