"""Command line of the evaluator: Grand Challenge mode (the container default) and folder mode.

    python -m evaluation                       # GC: /input/predictions.json, ground truth under
                                               # /opt/ml/input/data/ground_truth, /output/metrics.json
    python -m evaluation --input DIR --ground-truth DIR --output FILE [--report DIR]
    python -m evaluation folders --predictions DIR --ground-truth DIR --output FILE [--report DIR]

Exit status: 0 when metrics.json was written; 2 when the inputs make the evaluation
impossible (malformed predictions.json, no ground truth, an output that cannot be written,
bad arguments), with one line on stderr naming the file and the problem, found before any
case is scored, and no metrics.json written; 1 on any other failure.

stderr: one warning line per case with a problem (missing or unreadable prediction, missing,
unreadable or invalid points, a prediction resampled from another grid), then the summary.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from evaluation.discover import InputError, Pairing, find_ground_truth, pair_folders, pair_gc_jobs
from evaluation.run import evaluate_cases, metrics_document, write_metrics
from evaluation.workers import plan_workers, retain_freed_memory
from spine.arguments import positive_int, write_problem
from spine.console import HelpFormatter, configure_logging, program_name
from spine.gc import ContractError
from spine.layout import EvaluationLayout

__all__ = ["build_parser", "main"]

log = logging.getLogger("evaluation")

MODES = ("gc", "folders")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--report", type=Path, metavar="DIR",
                        help="also write a publishable HTML report (index.html, plots and tables) to DIR")
    parser.add_argument("--submission", metavar="NAME",
                        help="submission name for the report's header (default: the predictions folder's name)")
    parser.add_argument("--workers", type=positive_int, metavar="N",
                        help="processes for the cases (default: GRAND_CHALLENGE_MAX_WORKERS, else as many as the "
                             "CPUs and the container's memory limit allow; the log says why)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def build_parser() -> argparse.ArgumentParser:
    defaults = EvaluationLayout()
    parser = argparse.ArgumentParser(
        prog=program_name("evaluation", "verse-evaluate"),
        formatter_class=HelpFormatter,
        description="Score vertebra segmentations and centroids against VerSe ground truth: per-vertebra Dice, "
                    "HD95, HD, identification rate (20 mm), localisation error. Without a mode, runs the "
                    "Grand Challenge mode ('gc').",
        epilog="Exit status 2 (and no metrics.json) when predictions.json is malformed or no ground truth is found.",
    )
    modes = parser.add_subparsers(dest="mode", metavar="{gc,folders}")
    gc = modes.add_parser("gc", formatter_class=HelpFormatter, help="Grand Challenge layout (the container default)",
                          description="Read predictions.json and the jobs' outputs from --input, ground truth "
                                      "from --ground-truth, write --output.")
    gc.add_argument("--input", type=Path, default=defaults.input_dir, metavar="DIR",
                    help=f"folder with predictions.json and <job pk>/output/ (default {defaults.input_dir})")
    gc.add_argument("--ground-truth", type=Path, default=defaults.ground_truth_dir, metavar="DIR",
                    help=f"ground-truth folder (default {defaults.ground_truth_dir})")
    gc.add_argument("--output", type=Path, default=defaults.metrics_path, metavar="FILE",
                    help=f"metrics JSON to write (default {defaults.metrics_path})")
    _common(gc)
    folders = modes.add_parser("folders", formatter_class=HelpFormatter,
                               help="VerSe-named prediction and ground-truth folders",
                               description="Pair <case>_seg-vert_msk.nii.gz (+ <case>_points.json or "
                                           "<case>*_ctd.json) predictions with ground truth of the same case.")
    folders.add_argument("--predictions", type=Path, required=True, metavar="DIR", help="prediction folder")
    folders.add_argument("--ground-truth", type=Path, required=True, metavar="DIR", help="ground-truth folder")
    folders.add_argument("--output", type=Path, required=True, metavar="FILE", help="metrics JSON to write")
    _common(folders)
    return parser


def _configure_logging(verbose: bool) -> None:
    configure_logging(logging.DEBUG if verbose else logging.INFO, "%(levelname)s %(name)s: %(message)s", None)


def _with_default_mode(argv: Sequence[str]) -> list[str]:
    args = list(argv)
    if not args or (args[0] not in MODES and args[0] not in ("-h", "--help")):
        return ["gc", *args]
    return args


def _pair(args: argparse.Namespace) -> Pairing:
    ground_truth = find_ground_truth(args.ground_truth)
    if args.mode == "folders":
        return pair_folders(args.predictions, ground_truth)
    layout = EvaluationLayout(input_dir=args.input, ground_truth_dir=args.ground_truth, metrics_path=args.output)
    return pair_gc_jobs(layout, ground_truth)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``verse-evaluate`` and ``python -m evaluation``; returns the exit status."""
    args = build_parser().parse_args(_with_default_mode(sys.argv[1:] if argv is None else argv))
    _configure_logging(args.verbose)
    problem = write_problem(args.output) or (write_problem(args.report, folder=True) if args.report else None)
    if problem is not None:  # before any work: scoring 300 cases to fail on the write helps no one
        log.error("cannot write the output: %s", problem)
        return 2
    try:
        pairing = _pair(args)
    except (InputError, ContractError) as error:
        log.error("%s", str(error).replace("\n", " "))
        return 2

    retain_freed_memory()  # this process owns its allocator: cases reuse each other's pages
    plan = plan_workers(pairing.cases, args.workers)
    log.info("scoring %d cases (%d without prediction, %d predictions unmatched) with %d workers (%s)",
             len(pairing.cases), sum(c.prediction_mask is None for c in pairing.cases), len(pairing.unmatched),
             plan.workers, plan.reason)
    records = evaluate_cases(pairing.cases, plan.workers, progress=not args.no_progress)
    document = metrics_document(records, pairing.unmatched)
    try:
        path = write_metrics(args.output, document)
    except OSError as error:  # e.g. the disk filled up while scoring: one line, nothing half-written
        log.error("cannot write %s: %s", args.output, error.strerror or error)
        return 1
    aggregates = document["aggregates"]
    cases = aggregates["cases"]
    log.info("wrote %s: dice %.4f, id_rate %.4f, hd95 %.2f mm over %d cases (%d missing, %d unreadable "
             "predictions, %d errors; %d without points, %d with unusable points, %d resampled)", path,
             aggregates["dice"]["mean"], aggregates["id_rate"]["mean"], aggregates["hd95"]["mean"], cases["total"],
             cases["missing_prediction"], cases["unreadable_prediction"], cases["error"], cases["without_points"],
             cases["unusable_points"], cases["resampled"])
    if args.report is not None:
        from evaluation.report import ReportHeader, write_report  # matplotlib only when asked

        header = ReportHeader.now(submission=args.submission or _submission_name(args),
                                  ground_truth=args.ground_truth.resolve().name or str(args.ground_truth),
                                  cases=len(pairing.cases))
        index = write_report(document, args.report, header)
        log.info("wrote report %s", index)
    return 0


def _submission_name(args: argparse.Namespace) -> str:
    """The report's default submission name: the predictions folder's (folder mode) or the input folder's."""
    folder = args.predictions if args.mode == "folders" else args.input
    return Path(folder).resolve().name or str(folder)


if __name__ == "__main__":
    sys.exit(main())
