"""Console logging of the command lines: every log line and error on stderr, one format.

stdout stays free for data (and for nothing at all in the containers); ``-v`` turns on
debug lines for this project's packages only, so that third-party libraries (matplotlib's
font manager alone writes some 600 debug lines) stay at WARNING.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Iterable
from pathlib import Path

__all__ = ["OWN_LOGGERS", "DefaultsHelpFormatter", "HelpFormatter", "configure_logging", "program_name"]

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


def program_name(module: str, script: str, argv0: str | None = None) -> str:
    """The program as the user invoked it, for usage lines: the console script's name (``verse-evaluate``) when
    ``argv[0]`` is that script, else ``python -m <module>`` (``python -m evaluation``, tests, ``runpy``)."""
    argv0 = (sys.argv[0] if sys.argv else "") if argv0 is None else argv0
    return script if Path(argv0).name == script else f"python -m {module}"


_LITERAL = re.compile(r"``([^`]+)``|`([^`]+)`")


def plain_text(text: str) -> str:
    """Docstring markup out of help text: ````x```` and ```x``` become ``'x'``."""
    return _LITERAL.sub(lambda m: f"'{m.group(1) or m.group(2)}'", text)


class HelpFormatter(argparse.HelpFormatter):
    """Help without raw reStructuredText literals (descriptions come from docstrings)."""

    def _format_text(self, text: str) -> str:
        return super()._format_text(plain_text(text))

    def _expand_help(self, action: argparse.Action) -> str:
        return plain_text(super()._expand_help(action))


class DefaultsHelpFormatter(HelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """:class:`HelpFormatter` with each option's default, but none on required options, on options without a
    default (``None``, flags) or whose help already states it (no "(default: None)")."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.required or action.default is None or action.default is False or "default" in text.lower():
            return text
        return super()._get_help_string(action) or text
