"""Console logging of the command lines: every log line and error on stderr, one format.

stdout stays free for data (and for nothing at all in the containers); ``-v`` turns on
debug lines for this project's packages only, so that third-party libraries (matplotlib's
font manager alone writes some 600 debug lines) stay at WARNING.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable

__all__ = ["OWN_LOGGERS", "configure_logging"]

OWN_LOGGERS: tuple[str, ...] = ("algorithm", "evaluation", "export", "spine", "bench", "__main__")
"""Top-level loggers of this project; every other logger is third-party."""


def configure_logging(level: int, fmt: str = "%(asctime)s %(levelname)s %(name)s: %(message)s",
                      datefmt: str | None = "%H:%M:%S", own: Iterable[str] = OWN_LOGGERS) -> logging.Handler:
    """One stderr handler on the root logger at WARNING; this project's loggers at ``level``.

    Replaces a handler installed by an earlier call (tests call ``main()`` repeatedly) and
    leaves other handlers (pytest's capture) alone. Returns the handler.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt, datefmt))
    handler.verse_gc = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "verse_gc", False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    for name in own:
        logging.getLogger(name).setLevel(level)
    return handler
