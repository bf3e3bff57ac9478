"""Command line of the export package: one ``main(argv)`` with a registry of subcommands.

Each subcommand lives in its own module, which exposes ``add_parser(subparsers)``; that
function adds one sub-parser and sets ``func`` (``args -> exit code``) as its default.
To add a subcommand (``train``, ``onnx``, ...), append its module name to
:data:`SUBCOMMAND_MODULES`; modules are imported lazily only to register their parser,
so keep heavy imports (torch) inside the ``func`` they register.
"""

from __future__ import annotations

import argparse
import importlib
import logging
from collections.abc import Sequence

from spine.console import HelpFormatter, configure_logging, program_name

__all__ = ["SUBCOMMAND_MODULES", "build_parser", "main"]

log = logging.getLogger("export")

SUBCOMMAND_MODULES: tuple[str, ...] = (
    "export.synth",  # synth: synthetic VerSe-layout cases and the QC picture
    # -- training / ONNX export (export/train.py, export/onnx_export.py) --
    "export.train",  # train: train one stage's network
    "export.onnx_export",  # onnx: export a checkpoint to ONNX with a parity check
    "export.label_context",  # label-context: the chain-context labelling model on VID detections
    # -- end training / ONNX export --
)
"""Modules whose ``add_parser(subparsers)`` registers one subcommand each, in help order."""


DESCRIPTION = ("Make training data and models for the algorithm: synthetic spine CTs (synth), training of one "
               "stage's network on VerSe-layout data (train), ONNX export with a parity check (onnx), and the "
               "labelling's chain-context model on VID detections (label-context). "
               "'COMMAND --help' describes each.")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every registered subcommand."""
    parser = argparse.ArgumentParser(prog=program_name("export", "verse-export"), description=DESCRIPTION,
                                     formatter_class=HelpFormatter)
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more logging (info is the default, -vv debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), set up logging and run the subcommand; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING if args.quiet else (logging.DEBUG if args.verbose >= 2 else logging.INFO)
    configure_logging(level)
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError) as error:
        log.error("%s: %s", args.command, error)
        return 1
