"""Export a stage checkpoint to ONNX and prove it: ``python -m export onnx --checkpoint CKPT --out FILE``.

Export and verification are one step (MONAI's ``convert_to_onnx``): the graph is written
under a temporary name, its ``metadata_props`` filled from the checkpoint's
:class:`~spine.modelmeta.ModelMeta` (plus commit, version, provenance), then ONNX Runtime
(CPUExecutionProvider) and torch run the same real patches; only when the largest absolute
difference of the probabilities is within tolerance is the file renamed into place.
Otherwise :class:`ParityError` is raised, nothing is left at ``--out``, and the CLI exits 1.

The graph: input ``"input"`` float32 ``(batch, len(input_channels), *patch_shape_zyx)``,
output ``"output"`` float32 ``(batch, len(channels), *patch_shape_zyx)``, probabilities
(the graph ends in a sigmoid); the batch axis is dynamic, the spatial shape fixed.
``--fp16`` also writes ``FILE`` with ``.fp16.onnx``: float16 weights and arithmetic with
float32 input and output (Cast nodes at both ends), for GPUs, with its own parity figure.

Parity patches come from, in order: ``--parity-cases DIR`` (VerSe layout, or one CT file);
the repository's bundled example CT (``examples/totalsegmentator-example/``); a synthetic
phantom (an installed package without the examples). They go
through the inference preprocessing (``to_model_grid``, ``Intensity.apply``,
``crop_patch``) and are centred on vertebra centroids where known.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from spine.console import DefaultsHelpFormatter
from spine.modelmeta import ModelMeta
from spine.preprocess import crop_patch, to_model_grid, world_to_zyx

__all__ = [
    "FP16_TOLERANCE",
    "FP32_TOLERANCE",
    "ExportReport",
    "ParityError",
    "add_parser",
    "convert_fp16",
    "export_checkpoint",
    "git_commit",
    "main",
    "parity_patches",
]

log = logging.getLogger(__name__)

FP32_TOLERANCE = 1e-4
FP16_TOLERANCE = 1e-2
INPUT_NAME = "input"
OUTPUT_NAME = "output"


class ParityError(RuntimeError):
    """ONNX Runtime and torch disagree beyond tolerance; the message gives the figure."""


@dataclass
class ExportReport:
    """What an export wrote and how well it matched torch (max abs difference of probabilities)."""

    path: str
    stage: str
    size_bytes: int
    max_abs_diff: float
    tolerance: float
    parity_source: str
    n_patches: int
    fp16_path: str | None = None
    fp16_size_bytes: int | None = None
    fp16_max_abs_diff: float | None = None
    fp16_tolerance: float | None = None
    metadata: dict[str, str] | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


# ----------------------------------------------------------------------------- provenance


def git_commit(repo: str | os.PathLike[str] | None = None) -> str:
    """``git rev-parse HEAD`` of the repository holding this file, or '' outside a git checkout."""
    cwd = Path(repo) if repo is not None else Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return head


BUNDLED_EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "totalsegmentator-example"
"""The repository's example CT (TotalSegmentator's test scan): the default parity source."""


# ----------------------------------------------------------------------------- parity patches


def _real_sources(parity_cases: str | None) -> tuple[list[tuple[Any, dict[int, np.ndarray]]], str]:
    """(CT image, centroids mm) pairs to cut parity patches from, and a description."""
    from spine.image import read_image

    if parity_cases:
        root = Path(parity_cases)
        if root.is_file():
            return [(read_image(root), {})], str(root)
        from .readers import read_cases

        sources = []
        for case in read_cases(root):
            sources.append((case.ct, dict(case.centroids_mm)))
            if len(sources) >= 2:
                break
        if not sources:
            raise ValueError(f"--parity-cases {root}: no cases found")
        return sources, str(root)
    example = BUNDLED_EXAMPLE
    if (example / "ct.nii.gz").is_file():
        from spine.image import Geometry
        from spine.verse import read_centroids_mm

        ct = read_image(example / "ct.nii.gz")
        centroids = {}
        if (example / "seg-vert_ctd.json").is_file():
            centroids = read_centroids_mm(example / "seg-vert_ctd.json", Geometry.of(ct))
        return [(ct, centroids)], f"real CT ({example.name}, bundled)"
    try:
        from .synth import synth_case
    except ImportError:
        raise ValueError("no parity data: pass --parity-cases DIR (no bundled example, no synthetic generator)") \
            from None
    case = synth_case(0)
    return [(case.ct, dict(case.centroids_mm))], "synthetic phantom (seed 0)"


def parity_patches(meta: ModelMeta, parity_cases: str | None = None, *, per_source: int = 2) -> tuple[np.ndarray, str]:
    """Real network inputs ``(n, len(input_channels), *patch)`` float32 for a parity check."""
    from .datasets import segment_inputs

    sources, description = _real_sources(parity_cases)
    patches = []
    for ct, centroids_mm in sources:
        hu, grid = to_model_grid(ct, meta.spacing_zyx_mm)
        image = meta.intensity.apply(hu)
        centres = [world_to_zyx(grid, np.asarray(p, dtype=np.float64)) for _, p in sorted(centroids_mm.items())]
        centres = centres[:: max(len(centres) // per_source, 1)][:per_source] if centres else []
        if len(centres) < per_source:
            centres.append(np.asarray(image.shape, dtype=np.float64) / 2.0)
        for centre in centres[:per_source]:
            if meta.stage == "segment":
                x, _ = segment_inputs(image, centre, meta)
            else:
                x = crop_patch(image, centre, meta.patch_shape_zyx, pad_value=meta.intensity.background)[0][None]
            if x.shape[0] != len(meta.input_channels):
                raise ValueError(f"parity patch has {x.shape[0]} channels, the model expects "
                                 f"{len(meta.input_channels)}")
            patches.append(x.astype(np.float32))
    return np.stack(patches), description


# ----------------------------------------------------------------------------- graph


def _export_graph(model: Any, meta: ModelMeta, path: Path) -> None:
    """torch -> ONNX (legacy TorchScript exporter: no extra packages, plain static graph)."""
    import warnings

    import torch

    dummy = torch.zeros((1, len(meta.input_channels), *meta.patch_shape_zyx), dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation of the legacy exporter, instance-norm training flag
        torch.onnx.export(
            model, (dummy,), str(path), dynamo=False, opset_version=meta.opset, do_constant_folding=True,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )


def _write_metadata(path: Path, meta: ModelMeta, doc: str) -> dict[str, str]:
    import onnx

    model = onnx.load(str(path))
    props = meta.to_props()
    del model.metadata_props[:]
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.doc_string = doc
    model.producer_name = "verse-gc export"
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return props


def convert_fp16(source: Path, target: Path) -> None:
    """float16 copy of a float32 graph: weights and arithmetic in float16, float32 input and output.

    A Cast to float16 follows the input and a Cast to float32 precedes the output, so callers
    feed and read float32 as with the float32 model; metadata is copied unchanged.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(source))
    graph = model.graph
    for init in graph.initializer:
        if init.data_type == TensorProto.FLOAT:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name))
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT:
                attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float16)))
    in_name, out_name = graph.input[0].name, graph.output[0].name
    in16, out16 = f"{in_name}_fp16", f"{out_name}_fp16"
    for node in graph.node:
        node.input[:] = [in16 if n == in_name else n for n in node.input]
        node.output[:] = [out16 if n == out_name else n for n in node.output]
    graph.node.insert(0, helper.make_node("Cast", [in_name], [in16], to=TensorProto.FLOAT16, name="cast_input_fp16"))
    graph.node.append(helper.make_node("Cast", [out16], [out_name], to=TensorProto.FLOAT, name="cast_output_fp32"))
    del graph.value_info[:]
    onnx.checker.check_model(model)
    onnx.save(model, str(target))


def _ort_run(path: Path, patches: np.ndarray, threads: int = 2) -> tuple[np.ndarray, dict[str, str]]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    outputs = [session.run(None, {INPUT_NAME: patches[i:i + 2]})[0] for i in range(0, len(patches), 2)]
    return np.concatenate(outputs).astype(np.float32), dict(session.get_modelmeta().custom_metadata_map)


def export_checkpoint(
    checkpoint: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    fp16: bool = False,
    parity_cases: str | None = None,
    tolerance: float = FP32_TOLERANCE,
    fp16_tolerance: float = FP16_TOLERANCE,
    version: str | None = None,
    commit: str | None = None,
    trained_on: str | None = None,
    notes: str | None = None,
    peak_threshold: float | None = None,
) -> ExportReport:
    """Export ``checkpoint`` to ``out`` with metadata and a parity check (see module docstring).

    Raises :class:`ParityError` (and leaves nothing at ``out``) when ONNX Runtime and torch
    differ by more than ``tolerance`` on any probability.
    """
    import torch

    from spine import __version__

    from .networks import ProbabilityModel, build_network
    from .train import load_checkpoint

    out = Path(out)
    if out.suffix != ".onnx":
        raise ValueError(f"--out {out}: expected a .onnx file name")
    state = load_checkpoint(checkpoint)
    meta: ModelMeta = state["meta"]
    meta = replace(
        meta,
        commit=commit if commit is not None else (git_commit() or meta.commit),
        version=version or f"{__version__}+{meta.stage}.it{int(state['iteration'])}",
        trained_on=trained_on if trained_on is not None else meta.trained_on,
        notes=notes if notes is not None else meta.notes,
        peak_threshold=peak_threshold if peak_threshold is not None else meta.peak_threshold,
    )
    network = build_network(meta, state["network_config"])
    network.load_state_dict(state["model"])
    model = ProbabilityModel(network).eval()
    doc = (f"verse-gc {meta.stage} stage: input '{INPUT_NAME}' (N, {len(meta.input_channels)}, "
           f"{', '.join(map(str, meta.patch_shape_zyx))}) float32 = {list(meta.input_channels)} at "
           f"{meta.spacing_zyx_mm} mm (z, y, x), output '{OUTPUT_NAME}' = sigmoid probabilities of "
           f"{len(meta.channels)} channels; preprocessing and provenance in metadata_props ({len(meta.to_props())} "
           f"keys, prefix verse_gc.)")

    patches, source = parity_patches(meta, parity_cases)
    with torch.no_grad():
        expected = model(torch.from_numpy(patches)).numpy()

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out.stem}.", dir=out.parent))
    try:
        tmp = tmp_dir / out.name
        t0 = time.time()
        _export_graph(model, meta, tmp)
        props = _write_metadata(tmp, meta, doc)
        got, read_back = _ort_run(tmp, patches)
        if ModelMeta.from_props(read_back, source=str(out)) != meta:
            raise ParityError(f"{out}: metadata read back by ONNX Runtime differs from the checkpoint's")
        diff = float(np.max(np.abs(got - expected)))
        log.info("%s: ONNX Runtime vs torch on %d %s patches: max |diff| = %.3g (tolerance %.0e), %.1f s",
                 out.name, len(patches), source, diff, tolerance, time.time() - t0)
        if not np.isfinite(diff) or diff > tolerance:
            raise ParityError(f"{out}: parity check failed: max |ONNX Runtime - torch| = {diff:.3g} > {tolerance:.0e} "
                              f"on {len(patches)} patches from {source}; nothing written")
        report = ExportReport(path=str(out), stage=meta.stage, size_bytes=tmp.stat().st_size, max_abs_diff=diff,
                              tolerance=tolerance, parity_source=source, n_patches=len(patches), metadata=props)
        if fp16:
            out16 = out.with_name(out.stem + ".fp16.onnx")
            tmp16 = tmp_dir / out16.name
            convert_fp16(tmp, tmp16)
            got16, _ = _ort_run(tmp16, patches)
            diff16 = float(np.max(np.abs(got16 - expected)))
            log.info("%s: fp16 ONNX Runtime vs fp32 torch: max |diff| = %.3g (tolerance %.0e)", out16.name, diff16,
                     fp16_tolerance)
            if not np.isfinite(diff16) or diff16 > fp16_tolerance:
                raise ParityError(f"{out16}: fp16 parity check failed: max |diff| = {diff16:.3g} > "
                                  f"{fp16_tolerance:.0e}; nothing written")
            report.fp16_path, report.fp16_size_bytes = str(out16), tmp16.stat().st_size
            report.fp16_max_abs_diff, report.fp16_tolerance = diff16, fp16_tolerance
            os.replace(tmp16, out16)
        os.replace(tmp, out)
        return report
    finally:
        for leftover in tmp_dir.glob("*"):
            leftover.unlink()
        tmp_dir.rmdir()


# ----------------------------------------------------------------------------- CLI


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--checkpoint", required=True, help="training checkpoint (best.pt or last.pt)")
    parser.add_argument("--out", required=True, help="ONNX file to write (e.g. algorithm/models/locate.onnx)")
    parser.add_argument("--fp16", action="store_true", help="also write OUT with .fp16.onnx (float16 weights)")
    parser.add_argument("--parity-cases", metavar="PATH",
                        help="VerSe-layout folder or CT file for the parity patches (default: the bundled "
                             "example CT, examples/totalsegmentator-example/, else a synthetic phantom)")
    parser.add_argument("--tolerance", type=float, default=FP32_TOLERANCE, help="fp32 max abs difference")
    parser.add_argument("--fp16-tolerance", type=float, default=FP16_TOLERANCE, help="fp16 max abs difference")
    parser.add_argument("--version", help="model version text (default <package>+<stage>.it<iteration>)")
    parser.add_argument("--trained-on", help="override the checkpoint's provenance text")
    parser.add_argument("--notes", help="override the checkpoint's notes (metadata 'notes')")
    parser.add_argument("--peak-threshold", type=float, metavar="P",
                        help="locate: heatmap value a peak must reach to be a candidate (metadata; default: "
                             "the checkpoint's, 0.3)")
    parser.add_argument("--report", help="also write the export report (JSON) here")
    return parser


def run(args: argparse.Namespace) -> int:
    """Entry point of the ``onnx`` subcommand."""
    try:
        report = export_checkpoint(args.checkpoint, args.out, fp16=args.fp16, parity_cases=args.parity_cases,
                                   tolerance=args.tolerance, fp16_tolerance=args.fp16_tolerance, version=args.version,
                                   trained_on=args.trained_on, notes=args.notes,
                                   peak_threshold=args.peak_threshold)
    except ParityError as error:
        log.error("%s", error)
        return 1
    if args.report:
        Path(args.report).write_text(report.to_json(), encoding="utf-8")
    log.info("wrote %s (%.2f MB, parity %.3g)%s", report.path, report.size_bytes / 1e6, report.max_abs_diff,
             f"; {report.fp16_path} (parity {report.fp16_max_abs_diff:.3g})" if report.fp16_path else "")
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``onnx`` on an argparse subparsers object."""
    parser = subparsers.add_parser("onnx", help="export a checkpoint to ONNX with a parity check",
                                   description=__doc__.split("\n\n")[0],
                                   formatter_class=DefaultsHelpFormatter)
    configure_parser(parser)
    parser.set_defaults(func=run, handler=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = configure_parser(argparse.ArgumentParser(prog="python -m export.onnx_export"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except (ValueError, FileNotFoundError) as error:
        log.error("%s", error)
        return 1


if __name__ == "__main__":
    sys.exit(main())
