"""Progress inside long steps, as a plain callback: stages report counts, the caller renders them.

A stage that takes long (training steps within an epoch, encoding, traversals and figures,
permutation tests) accepts ``progress``, a callable

    progress(stage: str, done: int, total: int) -> None

called with ``done == 0`` when the stage starts (optional), then as units finish, and last with
``done == total``. A stage that ends before its announced total (early stopping) reports its
final count as both ``done`` and ``total``. ``stage`` names what is counted, e.g. ``"VAE epoch
3/12 steps"``; each distinct name is one bar or one series of log lines. Rates and times are
the renderer's business (the flows draw a bar on a terminal, log lines otherwise), so the
pipeline stays free of any display or Prefect code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

Progress = Callable[[str, int, int], None]
T = TypeVar("T")


def report(progress: Progress | None, stage: str, done: int, total: int) -> None:
    """Call ``progress`` if there is one."""
    if progress is not None:
        progress(stage, done, total)


def counted(items: Iterable[T], progress: Progress | None, stage: str, total: int) -> Iterator[T]:
    """Yield ``items``, reporting one unit done after each (and the start, and the true count at the end)."""
    report(progress, stage, 0, total)
    done = 0
    for item in items:
        yield item
        done += 1
        report(progress, stage, done, total)
    if done != total:
        report(progress, stage, done, done)
