"""Progress of the long stages: a tqdm bar on a terminal, the stage's log line elsewhere.

Detect, locate and segment run a network over tens to hundreds of patch batches (locate alone takes
15-50 s on a CPU); on a terminal :func:`stage_bar` shows a bar that counts the patches each model has
run in the stage, with elapsed time and rate, and clears it when the stage ends. Off a terminal (a
log file, the containers) there is no bar: :class:`algorithm.report.StageTimer` logs one line per
stage. ``-q`` (loggers above INFO) hides the bar too.

Models report their batches through :func:`advance`; the bar of the stage running in this thread (a
context variable, so the invoke server's threads keep theirs apart) counts them.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
from collections.abc import Iterator
from typing import Any

__all__ = ["advance", "shows_bars", "stage_bar"]

_BAR: contextvars.ContextVar[Any] = contextvars.ContextVar("verse_gc_stage_bar", default=None)


def shows_bars(stream: Any = None) -> bool:
    """Bars only on a terminal, and only when the algorithm's INFO lines show (not with ``-q``)."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and logging.getLogger("algorithm").isEnabledFor(logging.INFO)


@contextlib.contextmanager
def stage_bar(name: str) -> Iterator[None]:
    """A bar for stage ``name`` while the block runs (:func:`shows_bars` decides whether it appears)."""
    if not shows_bars():
        yield
        return
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    # log lines go through tqdm.write meanwhile, so that they do not glue onto the bar
    with logging_redirect_tqdm(), tqdm(desc=name, unit=" patch", leave=False, file=sys.stderr,
                                       dynamic_ncols=True) as bar:
        token = _BAR.set(bar)
        try:
            yield
        finally:
            _BAR.reset(token)


def advance(patches: int) -> None:
    """Count ``patches`` run by a model on the current stage's bar (nothing without one)."""
    bar = _BAR.get()
    if bar is not None:
        bar.update(patches)
