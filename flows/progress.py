"""Rendering of the pipeline's progress callbacks (:mod:`pipeline.progress`) inside flows.

On a terminal each stage is a bar (rich, which comes with Prefect) with its count, rate and
time left; otherwise (Prefect's logs, cron, a file) a stage writes a log line at most every
few seconds, with the same figures, and a last one when it ends. A stage that ends within the
interval logs nothing: the flows' own lines already say what it did.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

LOG_EVERY_SECONDS = 5.0


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


@dataclass
class _Stage:
    started: float
    last_logged: float
    logged: bool = False


class LogProgress:
    """A ``progress(stage, done, total)`` callback that logs a line per stage every ``every`` seconds.

    Lines read ``VAE epoch 2/10 (steps): 40/126 (32 %), 8.1/s, about 0:11 left`` and, for a stage
    that logged before, ``... 126/126 done in 0:16``.
    """

    def __init__(
        self,
        log: Callable[[str], None],
        every: float = LOG_EVERY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._log = log
        self._every = every
        self._clock = clock
        self._stages: dict[str, _Stage] = {}
        self._lock = threading.Lock()

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = self._clock()
        with self._lock:
            state = self._stages.setdefault(stage, _Stage(started=now, last_logged=now))
            finished = done >= total
            if finished:
                del self._stages[stage]
                if state.logged:
                    self._log(f"{stage}: {done}/{total} done in {_duration(now - state.started)}")
            elif now - state.last_logged >= self._every and done > 0:
                state.last_logged, state.logged = now, True
                rate = done / max(now - state.started, 1e-9)
                self._log(
                    f"{stage}: {done}/{total} ({100 * done / total:.0f} %), {rate:.3g}/s, "
                    f"about {_duration((total - done) / rate)} left"
                )


class BarProgress:
    """A ``progress(stage, done, total)`` callback that draws one rich bar per running stage."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._bars = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._clock = clock
        self._tasks: dict[str, tuple[int, float]] = {}
        self._lock = threading.Lock()

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = self._clock()
        with self._lock:
            if stage not in self._tasks:
                if not self._tasks:
                    self._bars.start()
                self._tasks[stage] = (self._bars.add_task(stage, total=total, rate=""), now)
            task, started = self._tasks[stage]
            rate = f"{done / (now - started):.3g}/s" if done and now > started else ""
            self._bars.update(task, completed=done, total=total, rate=rate)
            if done >= total:
                self._bars.remove_task(self._tasks.pop(stage)[0])
                if not self._tasks:
                    self._bars.stop()

    def close(self) -> None:
        with self._lock:
            for task, _ in self._tasks.values():
                self._bars.remove_task(task)
            self._tasks.clear()
            self._bars.stop()


@contextmanager
def progress_display(log: Callable[[str], None], terminal: bool | None = None) -> Iterator[Callable]:
    """A progress callback for the duration of a task: bars on a terminal, else log lines.

    Parameters
    ----------
    log : callable
        Writes one line (e.g. the run logger's ``info``); used when there is no terminal.
    terminal : bool, optional
        Force one rendering; by default bars when stderr is a terminal.
    """
    terminal = sys.stderr.isatty() if terminal is None else terminal
    if not terminal:
        yield LogProgress(log)
        return
    bars = BarProgress()
    try:
        yield bars
    finally:
        bars.close()


def epoch_progress(show: Callable[[str, int, int], None], stage: str, total: int) -> Callable[[dict], None]:
    """Turn a trainer's per-epoch ``progress(record)`` into a ``show(stage, epoch, total)`` count."""
    return lambda record: show(stage, record["epoch"], total)
