"""Train the chain-context labelling model (stage ``label``) on VID detections and export it to ONNX.

The model (:mod:`algorithm.labelling.context`): a 2-layer bidirectional GRU over the candidates ordered
along the spine curve, fed :func:`algorithm.labelling.context.context_features`, emitting per candidate
``log P(class)`` over the 26 chain ranks and "false detection". Training data: the VID dataset's real
U-Net detections (``--data``, ``shared/data/vid-keypoints``; Buergin, Prevost, Stollenga, MICCAI 2023;
CC BY-SA 4.0), each detection's class the level of the annotated body within 20 mm (else false).
Pancreas-CT is left out (``--exclude-source``, default): its annotated levels sit one level off the
anatomy (issue 22) and the product must not learn that convention.

Augmentation, drawn afresh every epoch for every scan: a random contiguous crop of the chain (probability
``crop``, at least 3 candidates), each detection dropped with probability up to ``drop``, and up to a
few false detections added (a Poisson number, mean ``false_rate``): a copy of a detection moved 8-25 mm
off it, or a point off the spine between two neighbours, with low or copied region probabilities.

Training is resumable: ``--checkpoint`` is rewritten after every epoch (model, optimiser, epoch, the
arguments), and a run pointed at an existing checkpoint continues from its epoch. ``--onnx`` exports
the result with a parity check against torch on real chains and the metadata of
:class:`algorithm.labelling.context.ContextMeta`.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from algorithm.labelling.context import CONTEXT_CLASSES, CONTEXT_FEATURES, ContextMeta, ContextModel, context_features
from algorithm.labelling.region_model import training_ranks
from algorithm.labelling_prior import CHAIN_LABELS
from spine.vid import VidScan, read_scan, scan_ids, scan_sources

__all__ = ["ContextSettings", "export_onnx", "scan_targets", "train_context"]

log = logging.getLogger(__name__)

HIT_MM = 20.0
FALSE = len(CONTEXT_CLASSES) - 1
_RANK = {label: k for k, label in enumerate(CHAIN_LABELS)}
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "vid-keypoints"


@dataclass(frozen=True)
class ContextSettings:
    """Network and training settings (defaults chosen by patient-grouped CV, ``bench/labelling_real.py``)."""

    hidden: int = 48
    layers: int = 2
    epochs: int = 40
    batch: int = 32
    lr: float = 3e-3
    weight_decay: float = 1e-4
    crop: float = 0.5
    drop: float = 0.15
    false_rate: float = 0.5
    seed: int = 0


def scan_targets(scan: VidScan) -> np.ndarray:
    """(N,) class of each detection: the chain rank of the annotated body within 20 mm, else ``FALSE``."""
    ranks = np.array([_RANK[int(v)] for v in scan.truth_labels], dtype=np.intp)
    out = training_ranks(scan.bodies_mm, scan.truth_mm, ranks, HIT_MM)
    return np.where(out < 0, FALSE, out)


def augment(positions: np.ndarray, regions: np.ndarray, targets: np.ndarray, settings: ContextSettings,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One augmented copy of a scan's detections (module docstring)."""
    n = len(positions)
    keep = rng.random(n) >= rng.uniform(0.0, settings.drop)
    if n >= 4 and rng.random() < settings.crop:
        order = np.argsort(-positions[:, 2])
        length = int(rng.integers(3, n + 1))
        first = int(rng.integers(0, n - length + 1))
        window = np.zeros(n, dtype=bool)
        window[order[first:first + length]] = True
        keep &= window
    if keep.sum() < 2:
        keep[:] = True
    positions, regions, targets = positions[keep], regions[keep], targets[keep]
    extra = int(rng.poisson(settings.false_rate))
    if extra and len(positions) >= 2:
        new_x, new_p = [], []
        for _ in range(extra):
            k = int(rng.integers(len(positions)))
            direction = rng.normal(size=3)
            direction /= max(float(np.linalg.norm(direction)), 1e-9)
            if rng.random() < 0.5:
                x = positions[k] + direction * rng.uniform(8.0, 25.0)
            else:
                other = positions[(k + 1) % len(positions)]
                x = 0.5 * (positions[k] + other) + direction * rng.uniform(15.0, 40.0)
            p = regions[k] * rng.uniform(0.3, 1.0) if rng.random() < 0.5 else rng.beta(0.5, 6.0, size=3)
            new_x.append(x)
            new_p.append(np.clip(p, 0.0, 1.0))
        positions = np.vstack([positions, new_x])
        regions = np.vstack([regions, new_p])
        targets = np.r_[targets, np.full(extra, FALSE)]
    return positions, regions, targets


def _network(settings: ContextSettings) -> Any:
    import torch
    from torch import nn

    class ChainContext(nn.Module):
        """GRU over the chain -> per-candidate log-softmax over the classes; input (B, N, F)."""

        def __init__(self) -> None:
            super().__init__()
            self.gru = nn.GRU(len(CONTEXT_FEATURES), settings.hidden, num_layers=settings.layers,
                              batch_first=True, bidirectional=True)
            self.head = nn.Linear(2 * settings.hidden, len(CONTEXT_CLASSES))

        def forward(self, features: torch.Tensor) -> torch.Tensor:
            hidden, _ = self.gru(features)
            return torch.log_softmax(self.head(hidden), dim=-1)

        def forward_packed(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
            packed = nn.utils.rnn.pack_padded_sequence(features, lengths, batch_first=True, enforce_sorted=False)
            hidden, _ = self.gru(packed)
            hidden, _ = nn.utils.rnn.pad_packed_sequence(hidden, batch_first=True, total_length=features.shape[1])
            return torch.log_softmax(self.head(hidden), dim=-1)

    return ChainContext()


def _ensemble(states: Sequence[dict]) -> Any:
    """The networks of ``states`` as one module: ``log_softmax`` of the mean of their log probabilities (one
    network: itself)."""
    import torch
    from torch import nn

    networks = []
    for state in states:
        network = _network(ContextSettings(**state["settings"]))
        network.load_state_dict(state["model"])
        networks.append(network.eval())
    if len(networks) == 1:
        return networks[0]

    class Ensemble(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.members = nn.ModuleList(networks)

        def forward(self, features: torch.Tensor) -> torch.Tensor:
            mean = torch.stack([m(features) for m in self.members]).mean(dim=0)
            return torch.log_softmax(mean, dim=-1)

    return Ensemble().eval()


def class_log_prior(scans: Sequence[VidScan]) -> np.ndarray:
    """(27,) log class frequencies of the training detections (add-one smoothed)."""
    counts = np.ones(len(CONTEXT_CLASSES))
    for scan in scans:
        np.add.at(counts, scan_targets(scan), 1.0)
    return np.log(counts / counts.sum())


def train_context(scans: Sequence[VidScan], settings: ContextSettings, checkpoint: Path | None = None) -> dict:
    """Train on ``scans``; returns the checkpoint dict (``model``, ``settings``, ``class_log_prior``, ``epoch``).

    With ``checkpoint``: resumed from it when it exists, rewritten (temp name, then rename) after each epoch.
    """
    import torch

    torch.set_num_threads(1)  # the training is small; leave the other cores alone
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    model = _network(settings)
    optimiser = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=settings.lr, epochs=settings.epochs,
                                                   steps_per_epoch=max(1, math.ceil(len(scans) / settings.batch)))
    prior = class_log_prior(scans)
    start = 0
    if checkpoint is not None and checkpoint.is_file():
        state = torch.load(checkpoint, weights_only=False)
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        schedule.load_state_dict(state["schedule"])
        rng = state["rng"]
        start = int(state["epoch"])
        log.info("resuming %s at epoch %d", checkpoint, start)
    data = [(s.bodies_mm, s.region_probabilities, scan_targets(s)) for s in scans if len(s.bodies_mm)]
    state: dict = {}
    for epoch in range(start, settings.epochs):
        began, total, count = time.perf_counter(), 0.0, 0
        model.train()
        for _ in range(0, len(data), settings.batch):
            batch = [data[k] for k in rng.choice(len(data), size=min(settings.batch, len(data)), replace=False)]
            feats, targets = [], []
            for positions, regions, target in batch:
                x, p, y = augment(positions, regions, target, settings, rng)
                order, f = context_features(x, p)
                feats.append(f)
                targets.append(y[order])
            lengths = torch.tensor([len(f) for f in feats])
            width = int(lengths.max())
            padded = torch.zeros(len(feats), width, len(CONTEXT_FEATURES))
            target = torch.full((len(feats), width), -100, dtype=torch.long)
            for k, (f, y) in enumerate(zip(feats, targets, strict=True)):
                padded[k, :len(f)] = torch.from_numpy(f)
                target[k, :len(y)] = torch.from_numpy(y.astype(np.int64))
            out = model.forward_packed(padded, lengths)
            loss = torch.nn.functional.nll_loss(out.reshape(-1, out.shape[-1]), target.reshape(-1), ignore_index=-100)
            optimiser.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimiser.step()
            if schedule.last_epoch + 1 < schedule.total_steps:
                schedule.step()
            total += loss.item() * len(batch)
            count += len(batch)
        log.info("epoch %d/%d: loss %.4f (%.1f s)", epoch + 1, settings.epochs, total / max(count, 1),
                 time.perf_counter() - began)
        state = {"model": model.state_dict(), "optimiser": optimiser.state_dict(), "schedule": schedule.state_dict(),
                 "rng": rng, "epoch": epoch + 1, "settings": settings.__dict__, "class_log_prior": prior.tolist(),
                 "scans": len(scans)}
        if checkpoint is not None:
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            tmp = checkpoint.with_name(checkpoint.name + ".tmp")
            torch.save(state, tmp)
            os.replace(tmp, checkpoint)
    if not state:  # resumed a finished run
        state = {"model": model.state_dict(), "settings": settings.__dict__, "class_log_prior": prior.tolist(),
                 "epoch": start, "scans": len(scans)}
    return state


class ParityError(RuntimeError):
    """ONNX Runtime disagrees with torch beyond the tolerance."""


def export_onnx(state: dict | Sequence[dict], out: Path, parity_scans: Sequence[VidScan], *, trained_on: str = "",
                notes: str = "",
                evidence_weight: float = 1.0, fixed_evidence_weight: float = 1.0,
                calibration: tuple[float, float] = (1.0, 0.0), tolerance: float = 1e-4) -> float:
    """Write the checkpoint ``state`` (several: their ensemble, trained on the same scans) as an ONNX model with its
    metadata (temp name, then rename) after a parity check of ONNX Runtime against torch on ``parity_scans``'
    chains; returns the largest difference."""
    import onnx
    import torch

    from export.onnx_export import git_commit
    from spine import __version__

    states = [state] if isinstance(state, dict) else list(state)
    model = _ensemble(states)
    epochs = "+".join(str(int(s["epoch"])) for s in states)
    meta = ContextMeta(class_log_prior=tuple(float(v) for v in states[0]["class_log_prior"]),
                       evidence_weight=evidence_weight, fixed_evidence_weight=fixed_evidence_weight,
                       calibration=tuple(calibration), trained_on=trained_on,
                       commit=git_commit(), version=f"{__version__}+label.ep{epochs}", notes=notes)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.onnx")
    dummy = torch.zeros(1, 7, len(CONTEXT_FEATURES))
    torch.onnx.export(model, (dummy,), str(tmp), dynamo=False, opset_version=meta.opset, do_constant_folding=True,
                      input_names=["features"], output_names=["log_probability"],
                      dynamic_axes={"features": {1: "candidates"}, "log_probability": {1: "candidates"}})
    graph = onnx.load(str(tmp))
    graph.doc_string = __doc__.split("\n", 1)[0]
    del graph.metadata_props[:]
    for key, value in meta.to_props().items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(graph, str(tmp))
    try:
        runtime = ContextModel(tmp)
        worst = 0.0
        for scan in parity_scans:
            if not len(scan.bodies_mm):
                continue
            order, features = context_features(scan.bodies_mm, scan.region_probabilities)
            with torch.no_grad():
                expected = model(torch.from_numpy(features[None])).numpy()[0]
            got = runtime.log_probability(scan.bodies_mm, scan.region_probabilities)[order]
            worst = max(worst, float(np.abs(got - expected).max()))
        if worst > tolerance:
            raise ParityError(f"{out}: ONNX Runtime differs from torch by {worst:.3g} (> {tolerance:g})")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("wrote %s (%d bytes), parity %.2g on %d chains", out, out.stat().st_size, worst, len(parity_scans))
    return worst


def read_training(folder: Path, exclude: Sequence[str]) -> list[VidScan]:
    """VID scans of ``folder`` whose source is not in ``exclude``; ValueError naming the folder when unusable."""
    if not (folder / "GroundTruth").is_dir() or not (folder / "Predictions").is_dir():
        raise ValueError(f"{folder}: not a VID keypoints folder (GroundTruth/ and Predictions/ expected)")
    sources = scan_sources(folder)
    return [read_scan(folder, scan) for scan in scan_ids(folder) if sources.get(scan, "unknown") not in exclude]


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    defaults = ContextSettings()
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the vid-keypoints folder")
    parser.add_argument("--exclude-source", action="append", default=None, metavar="SOURCE",
                        help="leave this source's scans out (COLONOG, Pancreas-CT, VerSe; default Pancreas-CT)")
    parser.add_argument("--checkpoint", type=Path, required=True, help="training checkpoint (resumed when it exists)")
    parser.add_argument("--seeds", default="",
                        help="comma-separated seeds: train one network each (checkpoint NAME-seedK.pt) and export "
                             "their ensemble (default: --seed alone)")
    parser.add_argument("--onnx", type=Path, help="export the trained model here (e.g. algorithm/models/label.onnx)")
    parser.add_argument("--evidence-weight", type=float, default=1.0,
                        help="the decoder's weight of the model's evidence (metadata; chosen by CV)")
    parser.add_argument("--fixed-evidence-weight", type=float, default=1.0,
                        help="the same with a fixed label (metadata; chosen by CV)")
    parser.add_argument("--calibration", type=float, nargs=2, default=(1.0, 0.0), metavar=("A", "B"),
                        help="confidence map sigmoid(A logit(p) + B) (metadata; chosen by CV)")
    parser.add_argument("--notes", default="", help="metadata notes (e.g. the CV figures)")
    for name, value in defaults.__dict__.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    return parser


def run(args: argparse.Namespace) -> int:
    exclude = args.exclude_source if args.exclude_source is not None else ["Pancreas-CT"]
    try:
        scans = read_training(args.data, exclude)
    except ValueError as error:
        log.error("%s", error)
        return 2
    if not scans:
        log.error("%s: no training scans left after excluding %s", args.data, ", ".join(exclude))
        return 2
    settings = ContextSettings(**{k: getattr(args, k) for k in ContextSettings().__dict__})
    log.info("training on %d VID scans (excluded: %s)", len(scans), ", ".join(exclude) or "none")
    seeds = [int(v) for v in args.seeds.split(",")] if args.seeds else [settings.seed]
    states = []
    for seed in seeds:
        checkpoint = args.checkpoint if len(seeds) == 1 else args.checkpoint.with_name(
            f"{args.checkpoint.stem}-seed{seed}{args.checkpoint.suffix}")
        states.append(train_context(scans, dataclasses.replace(settings, seed=seed), checkpoint))
    if args.onnx:
        export_onnx(states, args.onnx, scans[:20], trained_on=f"VID Training detections, {len(scans)} scans "
                    f"(without {', '.join(exclude) or 'nothing'}), augmented", notes=args.notes,
                    evidence_weight=args.evidence_weight, fixed_evidence_weight=args.fixed_evidence_weight,
                    calibration=tuple(args.calibration))
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``label-context`` on an argparse subparsers object."""
    parser = subparsers.add_parser("label-context", help="train the chain-context labelling model on VID, export it",
                                   description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    configure_parser(parser)
    parser.set_defaults(func=run, handler=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = configure_parser(argparse.ArgumentParser(prog="python -m export.label_context")).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
