"""Command line of the algorithm container (``python -m algorithm``, ``verse-algorithm``).

Modes::

    python -m algorithm                          # GC exec: /input -> /output (one case)
    python -m algorithm --input DIR --output DIR # the same on local folders in GC layout
    python -m algorithm serve [--host H --port P] # GC invoke: HTTP server, GET /health, POST /invoke
    python -m algorithm predict CT... --output DIR # research use: VerSe files, points, QC picture, report
    python -m algorithm predict CT --centroids ctd.mrk.json --output DIR  # segment from corrected centroids

Without a command the mode is ``exec``, or ``serve`` when the image was built with
``VERSE_GC_API_METHOD=invoke``. Log lines go to stderr (third-party libraries at WARNING
even with ``-v``); a failure prints one line ``error: <file>: <problem>`` on stderr and
exits 1 (usage errors, such as an ``--output`` that is a file, exit 2 before any work),
leaving nothing in the output folder.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import SimpleITK as sitk

from algorithm.inputs import InputError, load_ct
from algorithm.labelling import LABELLERS, Constraints, Fix, learned_decoder, parse_fix
from algorithm.models import DEVICES, ModelError, Models, find_model_dir, load_models
from algorithm.outputs import check_writable
from algorithm.pipeline import (
    Options,
    predict_case,
    read_gc_input,
    run_gc_case,
    segment_from_centroids,
    write_case_outputs,
)
from algorithm.serve import DEFAULT_HOST, DEFAULT_PORT, InvokeServer
from spine.arguments import output_folder, positive_int
from spine.centroids import read_labelled_centroids
from spine.console import HelpFormatter, configure_logging, program_name
from spine.image import IMAGE_SUFFIXES, Geometry, strip_image_suffix
from spine.layout import AlgorithmLayout
from spine.verse import case_id_of

__all__ = ["build_parser", "main"]

log = logging.getLogger("algorithm")

COMMANDS = ("exec", "serve", "predict")
API_METHOD_ENV = "VERSE_GC_API_METHOD"


# --------------------------------------------------------------------------- argparse validators


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be in 0..65535, got {value}")
    return value


def _number_in(what: str, low: float, high: float, *, low_closed: bool, high_closed: bool) -> Callable[[str], float]:
    """An argparse type: a float in the interval from ``low`` to ``high`` (each end closed or open),
    else one error line that names ``what`` and the interval."""
    interval = f"{'[' if low_closed else '('}{low:g}, {high:g}{']' if high_closed else ')'}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        above = value >= low if low_closed else value > low
        below = value <= high if high_closed else value < high
        if not (above and below):
            raise argparse.ArgumentTypeError(f"{what} must be in {interval}, got {value:g}")
        return value

    return parse


overlap_value = _number_in("overlap", 0.0, 1.0, low_closed=True, high_closed=False)
"""``--overlap``: the sliding window's overlap, in [0, 1)."""
bone_floor_value = _number_in("bone floor", 0.0, Options().segment_floor, low_closed=False, high_closed=True)
"""``--bone-floor``: the segment stage's floor where the CT shows bone, in (0, the segment floor]."""


def _fix(text: str) -> Fix:
    try:
        return parse_fix(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _existing_dir(text: str) -> Path:
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: no such folder")
    return path


PIPELINE_SWITCHES: tuple[tuple[str, str, str], ...] = (
    ("recentre", "recentre", "move vertebra candidates onto the bodies the outline model outlines and fill gaps in "
                             "the chain (algorithm.recentre)"),
    ("sacrum", "sacrum_check", "drop the sacrum's S1 from the foot of the chain when the model folder has sacrum.onnx "
                               "(algorithm.sacrum)"),
    ("skull", "skull_anchor", "where the CT shows the skull base, drop what lies above it and name the vertebra under "
                              "it C1, when the model folder has skull.onnx (algorithm.skull)"),
    ("ribs", "rib_evidence", "give the labelling the ribs each vertebra bears as region evidence (algorithm.ribs)"),
    ("fragments", "edge_fragments", "label the sliver of the vertebra beyond a chain end that the field of view cuts "
                                    "(algorithm.fragments)"),
    ("fill-skipped", "fill_skipped", "place the levels the labelled chain passes over (no candidate of their own) "
                                     "between their neighbours (algorithm.labelling.skipped)"),
    ("size-evidence", "size_evidence", "where the vertebrae come out the wrong size for their levels (a neck named "
                                       "lumbar), label again with their sizes as region evidence (algorithm.sizes)"),
    ("disc-centres", "disc_centres", "on coarse CTs, move the points of C3 to T1 to the middle of their bodies' "
                                     "discs where the CT shows them (algorithm.discs)"),
)
"""The pipeline's on/off switches: (flag without ``--``, :class:`algorithm.pipeline.Options` field, help). The
``predict``/``exec``/``serve`` commands and ``bench/real.py`` declare them, with the two valued settings, through
:func:`add_pipeline_settings`, so a setting is declared once."""


def _dest(flag: str) -> str:
    """argparse's attribute for ``--flag`` (``fill-skipped`` -> ``fill_skipped``)."""
    return flag.replace("-", "_")


def add_pipeline_settings(parser: argparse.ArgumentParser) -> None:
    """``--X/--no-X`` for each of :data:`PIPELINE_SWITCHES`, ``--bone-floor`` and ``--labeller``; every default
    None (the pipeline's own, :class:`Options`)."""
    default = Options()
    for flag, name, text in PIPELINE_SWITCHES:
        parser.add_argument(f"--{flag}", action=argparse.BooleanOptionalAction, default=None,
                            help=f"{text} (default: {'on' if getattr(default, name) else 'off'})")
    parser.add_argument("--bone-floor", type=bone_floor_value, default=None, metavar="P",
                        help="segmentation floor where the CT shows bone, for voxels that join their vertebra "
                             f"(default: {default.bone_floor}; {default.segment_floor}: the plain floor only)")
    parser.add_argument("--labeller", choices=LABELLERS, default=None,
                        help="decoder: region evidence read per candidate; learned: read in the context of the whole "
                             f"chain by models/label.onnx, inside the same decoder (default: {default.labeller})")


def pipeline_options(args: argparse.Namespace, **fields: object) -> Options:
    """:class:`Options` with ``fields``, and each setting of :func:`add_pipeline_settings` as ``args`` has it (None,
    or not parsed at all: ``fields``' or the pipeline's default)."""
    settings: dict[str, object] = {name: bool(getattr(args, _dest(flag))) for flag, name, _ in PIPELINE_SWITCHES
                                   if getattr(args, _dest(flag), None) is not None}
    settings |= {name: getattr(args, name) for name in ("bone_floor", "labeller")
                 if getattr(args, name, None) is not None}
    return Options(**{**fields, **settings})  # type: ignore[arg-type]


def pipeline_flags(options: Options) -> list[str]:
    """The command-line flags that reproduce ``options``' settings (``--ribs``, ``--no-skull``, ...,
    ``--bone-floor P``, ``--labeller NAME``); no bone floor is the plain floor's."""
    return [*(f"--{'' if getattr(options, name) else 'no-'}{flag}" for flag, name, _ in PIPELINE_SWITCHES),
            "--bone-floor", str(_floor(options)), "--labeller", options.labeller]


def pipeline_values(options: Options) -> dict[str, object]:
    """``options``' settings by flag name, ``-`` as ``_`` (``{"ribs": True, ..., "bone_floor": 0.2, "labeller":
    "decoder"}``); no bone floor is the plain floor's, as in :func:`pipeline_flags` (a benchmark's record never says
    null where a number ran)."""
    return {**{_dest(flag): bool(getattr(options, name)) for flag, name, _ in PIPELINE_SWITCHES},
            "bone_floor": _floor(options), "labeller": options.labeller}


def _floor(options: Options) -> float:
    """The segmentation floor where the CT shows bone: ``bone_floor``, or the plain floor where there is none."""
    return options.segment_floor if options.bone_floor is None else options.bone_floor


# --------------------------------------------------------------------------- parser


def _program() -> str:
    """The name the user typed: ``verse-algorithm`` for the console script, else ``python -m algorithm``."""
    return program_name("algorithm", "verse-algorithm")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--models", type=_existing_dir, metavar="DIR",
                        help="folder with detect.onnx, locate.onnx, segment.onnx. Lookup order: /opt/ml/model "
                             "(GC's model tarball) when it holds them, even over --models (a warning says so); then "
                             "--models; then $VERSE_GC_MODELS; then the bundled models")
    common.add_argument("--device", choices=DEVICES, default="auto",
                        help="execution provider: CUDA when available and working (auto), or force one")
    common.add_argument("--threads", type=positive_int, metavar="N", help="CPU threads per model (default: all)")
    common.add_argument("--overlap", type=overlap_value, default=0.5, help="sliding-window overlap in [0, 1) (0.5)")
    add_pipeline_settings(common)
    verbosity = common.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")

    gc = argparse.ArgumentParser(add_help=False)
    gc.add_argument("--input", type=Path, default=Path("/input"), metavar="DIR",
                    help="input folder in GC layout (inputs.json, images/ct/...) (default /input)")
    gc.add_argument("--output", type=output_folder, default=Path("/output"), metavar="DIR",
                    help="output folder (default /output)")

    parser = argparse.ArgumentParser(
        prog=_program(), formatter_class=HelpFormatter,
        description="Detect, locate, label and segment vertebrae on a spine CT (ONNX Runtime). Without a "
                    "command: GC exec mode (/input -> /output).",
    )
    commands = parser.add_subparsers(dest="command", metavar="{exec,serve,predict}")
    commands.add_parser("exec", parents=[common, gc], formatter_class=HelpFormatter,
                        help="one GC case from --input to --output (default)",
                        description="Run one Grand Challenge case: the CT of inputs.json's 'ct-image' socket "
                                    "(or the single image under images/*/) -> label map and centroid points.")
    serve = commands.add_parser("serve", parents=[common, gc], formatter_class=HelpFormatter,
                                help="GC invoke mode: HTTP server",
                                description="Load the models once, then answer GET /health and POST /invoke "
                                            "(one case from --input to --output per call).")
    serve.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on ({DEFAULT_HOST})")
    serve.add_argument("--port", type=_port, default=DEFAULT_PORT, help=f"port ({DEFAULT_PORT})")
    predict = commands.add_parser("predict", parents=[common], formatter_class=HelpFormatter,
                                  help="CT files or folders -> VerSe files + QC",
                                  description="Predict several CTs; per case write <case>_seg-vert_msk.nii.gz, "
                                              "<case>_seg-subreg_ctd.json, <case>_points.json, <case>_ctd.mrk.json "
                                              "(3D Slicer), <case>_vertebrae.csv (body heights, Genant grade, "
                                              "trabecular HU: research output, not a diagnosis), <case>_snp.png "
                                              "and <case>_report.json.")
    predict.add_argument("cts", nargs="+", type=Path, metavar="CT", help="CT image files or folders of them")
    predict.add_argument("--output", type=output_folder, required=True, metavar="DIR", help="output folder")
    predict.add_argument("--no-qc", action="store_true", help="skip the QC picture")
    known = predict.add_argument_group(
        "what you know", "Correcting a result: segment from your centroids, or state facts the labelling must respect.")
    known.add_argument("--centroids", type=Path, metavar="FILE",
                       help="labelled centroids (3D Slicer .mrk.json, GC points JSON or VerSe centroid JSON; one CT): "
                            "locate and label are skipped, the CT is segmented from them")
    known.add_argument("--fix", type=_fix, action="append", default=[], metavar="LABEL=X,Y,Z",
                       help="the candidate nearest this LPS point (mm) is LABEL, e.g. L5=12.5,-30,401 (repeatable)")
    known.add_argument("--lumbar", type=int, choices=(4, 5, 6), help="the spine has this many lumbar vertebrae")
    known.add_argument("--thoracic", type=int, choices=(11, 12, 13), help="the spine has this many thoracic vertebrae")
    return parser


def _normalise_argv(argv: Sequence[str]) -> list[str]:
    argv = list(argv)
    if argv and (argv[0] in COMMANDS or argv[0] in ("-h", "--help")):
        return argv
    default = "serve" if os.environ.get(API_METHOD_ENV, "").lower() == "invoke" else "exec"
    return [default, *argv]


def _configure_logging(args: argparse.Namespace) -> None:
    configure_logging(logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO)


def _options(args: argparse.Namespace) -> Options:
    try:
        constraints = Constraints(tuple(getattr(args, "fix", ())), getattr(args, "lumbar", None),
                                  getattr(args, "thoracic", None))
    except ValueError as error:
        raise InputError(f"constraints: {error}") from None
    return pipeline_options(args, overlap=args.overlap, constraints=constraints)


def _load(args: argparse.Namespace, layout: AlgorithmLayout) -> Models:
    source = find_model_dir(layout=layout, models=args.models)
    models = load_models(source, device=args.device, threads=args.threads)
    if getattr(args, "labeller", None) == "learned":
        try:  # at start-up, not in the first case: an unusable label.onnx fails every case alike
            learned_decoder()
        except ValueError as error:
            raise ModelError(str(error)) from None
    return models


# --------------------------------------------------------------------------- modes


def run_exec(args: argparse.Namespace) -> int:
    layout = AlgorithmLayout(input_dir=args.input, output_dir=args.output)
    if not layout.input_dir.is_dir():
        raise InputError(f"{layout.input_dir}: input folder does not exist (GC exec mode reads a GC input folder; "
                         f"for CT files: {_program()} predict CT --output DIR; see {_program()} --help)")
    check_writable(layout.output_dir)  # an unwritable /output is found before the input is read or a model runs
    path, image = read_gc_input(layout)  # bad input fails before the models load
    models = _load(args, layout)
    run_gc_case(path, image, layout, models, options=_options(args))
    return 0


def run_serve(args: argparse.Namespace) -> int:
    layout = AlgorithmLayout(input_dir=args.input, output_dir=args.output)
    check_writable(layout.output_dir)
    server = InvokeServer((args.host, args.port), layout, lambda: _load(args, layout), options=_options(args))
    failure: list[BaseException] = []

    def stop(error: BaseException) -> None:
        failure.append(error)
        server.shutdown()

    server.load_in_background(on_error=stop)
    log.info("serving on %s (GET /health, POST /invoke)", server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        log.info("stopped")
    finally:
        server.server_close()
    if failure:
        raise failure[0]
    return 0


def _is_mask(path: Path) -> bool:
    """VerSe masks and other label maps that sit beside CTs in a data set folder."""
    stem = strip_image_suffix(path.name)
    return stem.endswith(("_msk", "_mask")) or "_seg-" in stem


def _collect_cts(paths: Sequence[Path]) -> list[Path]:
    """CT files from the arguments: files as given, folders searched recursively (masks skipped)."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(p for p in sorted(path.rglob("*")) if p.is_file() and not p.name.startswith(".")
                         and p.name.lower().endswith(IMAGE_SUFFIXES) and not _is_mask(p))
        elif path.is_file():
            found.append(path)
        else:
            raise InputError(f"{path}: no such file or folder")
    if not found:
        raise InputError(f"{', '.join(map(str, paths))}: no CT image found")
    return found


def run_predict(args: argparse.Namespace) -> int:
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    cts = _collect_cts(args.cts)
    ids = [case_id_of(p.name) for p in cts]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise InputError(f"{args.output}: several inputs would write case {repeated[0]!r}; predict them separately")
    options = _options(args)
    if args.centroids is not None and len(cts) != 1:
        raise InputError(f"{args.centroids}: --centroids belong to one CT, {len(cts)} given")
    if args.centroids is not None and options.constraints:
        raise InputError(f"{args.centroids}: --fix, --lumbar and --thoracic steer the labelling, which --centroids "
                         "skips; state the labels in the centroid file instead")
    check_writable(args.output)
    models = _load(args, AlgorithmLayout())
    failures = 0
    # the bar only on a terminal and without -q: in a log file it would glue onto the error lines
    with logging_redirect_tqdm(), tqdm(total=len(cts), unit="case", desc="predict",
                                       disable=True if args.quiet else None) as progress:
        for path, case_id in zip(cts, ids, strict=True):
            progress.set_postfix_str(case_id)
            try:
                image = load_ct(path)
                if args.centroids is not None:
                    centroids = read_labelled_centroids(args.centroids, Geometry.of(image))
                    result = segment_from_centroids(image, centroids, models, options=options,
                                                    source=str(args.centroids))
                else:
                    result = predict_case(image, models, options=options)
                written = write_case_outputs(result, image, args.output, case_id, source=str(path), models=models,
                                             qc=not args.no_qc)
                log.info("%s: %s", case_id, ", ".join(p.name for p in written))
            except (InputError, OSError, RuntimeError, ValueError) as error:
                failures += 1
                _error_line(error, path)
                progress.set_postfix_str(f"{failures} failed")
                continue  # a failed case does not advance the bar
            progress.update(1)
    if failures:
        log.warning("%d of %d cases failed", failures, len(cts))
    return 1 if failures else 0


def _error_line(error: BaseException, where: Path | str | None = None) -> None:
    """The one line on stderr: ``error: <file>: <problem>`` (``where`` prefixed unless already named)."""
    message = " ".join(str(error).split()) or type(error).__name__
    if where is not None and str(where) not in message:
        message = f"{where}: {message}"
    from tqdm import tqdm  # its write() clears a progress bar first, so the line stands alone

    tqdm.write(f"error: {message}", file=sys.stderr)
    sys.stderr.flush()


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM (docker stop, GC's time limit) unwinds like an exception: half-written outputs are removed."""
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 1 failure, 2 usage error)."""
    parser = build_parser()
    args = parser.parse_args(_normalise_argv(sys.argv[1:] if argv is None else argv))
    if args.command is None:
        parser.print_help()
        return 2
    _configure_logging(args)
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK warnings would break "one line on stderr"
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _terminate)
    handlers = {"exec": run_exec, "serve": run_serve, "predict": run_predict}
    try:
        return handlers[args.command](args)
    except (InputError, ModelError) as error:
        _error_line(error)
    except OSError as error:  # e.g. /output not writable: the message names the path
        _error_line(error, getattr(args, "output", None))
    except Exception as error:  # a bug or an environment problem: keep the traceback in the log
        log.exception("unexpected failure")
        _error_line(RuntimeError(f"{type(error).__name__}: {error}"), getattr(args, "input", None) or "algorithm")
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 1
