"""Rich progress displays on stderr: for Hugging Face trainers, and for multi-stage work such as encoding."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from transformers import TrainerCallback


class RichProgressCallback(TrainerCallback):
    """Replaces the trainer's tqdm bars: one bar over the optimiser steps, with the latest loss.

    Args:
        console: Where to draw (stderr by default).
        description: Text in front of the bar.
    """

    def __init__(self, console: Console | None = None, description: str = "training") -> None:
        self.console = console or Console(stderr=True)
        self.description = description
        self.progress: Progress | None = None
        self.task = None

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[loss]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task(self.description, total=state.max_steps, completed=state.global_step, loss="")

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.progress is not None and logs and "loss" in logs and math.isfinite(logs["loss"]):
            self.progress.update(self.task, loss=f"loss {logs['loss']:.4f}")

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if self.progress is None or not metrics:
            return
        ndcg = next((value for key, value in metrics.items() if key.endswith("ndcg@10")), None)
        if ndcg is not None:
            self.progress.console.print(f"step {state.global_step}: NDCG@10 {ndcg:.4f}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


#: How core functions report progress: ``track(description, total)`` adds a bar and returns
#: ``advance(n)`` (:func:`progress_bars` yields one).
Tracker = Callable[[str, int], Callable[[int], None]]


def no_progress(description: str, total: int) -> Callable[[int], None]:
    """The :data:`Tracker` that shows nothing: the default of functions that take ``track``."""
    return lambda n: None


@contextmanager
def progress_bars(console: Console | None = None, enabled: bool = True) -> Iterator[Tracker]:
    """Rich bars for multi-stage work (encoding, search) on stderr.

    Yields ``track(description, total)``, which adds a bar and returns ``advance(n)``. With
    ``enabled=False`` nothing is drawn (other processes of a distributed launch, tests).
    """
    if not enabled:
        yield no_progress
        return
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console or Console(stderr=True),
    )
    with progress:

        def track(description: str, total: int) -> Callable[[int], None]:
            task = progress.add_task(description, total=total)
            return lambda n: progress.advance(task, n)

        yield track
