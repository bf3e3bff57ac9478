"""Train one stage: ``python -m export train STAGE --data DIR --out DIR``.

Reads VerSe-layout cases with :mod:`export.readers`, preprocesses each once per stage
(:mod:`export.datasets`, cached as ``.npy`` under ``OUT/cache``), samples augmented
patches, and optimises a :class:`~export.networks.UNet3D` with Adam and a cosine learning
rate. Held-out cases are validated every ``--val-every`` iterations
(:mod:`export.validation`); ``OUT/last.pt`` and ``OUT/best.pt`` hold the model, the
optimizer, the random states and the stage's :class:`~spine.modelmeta.ModelMeta`, so
``--resume`` continues a run exactly and ``python -m export onnx`` needs nothing else.

Losses: detect and segment use BCE + soft Dice. The locate network's "centre_label" head
(:func:`export.networks.probabilities`) gets BCE (weighted ``1 + alpha * T``) + soft Dice on
its centre logit against ``T = max_c target_c`` (the class-agnostic centre heatmap), plus the
label cross-entropy at voxels near the centres weighted by ``T``. With ``--keep-centre`` the centre
target is ``max(T, F)``, ``F`` the starting network's own centre probability (a frozen copy of
``--init-from``): fine-tuning on CTs whose labels cover only part of the spine (pseudo-labels,
annotators who stopped at C3) then teaches the labels without unlearning the centres the labels
leave out, which plain fine-tuning did (self-training round 1). A plain sigmoid locate head
gets the voxel-weighted BCE on all 26 heatmaps (weight ``1 + alpha * T``, equal across channels
at a voxel, so the spine's sparsity is balanced without biasing which label fires). With plain
sigmoid heads the 26 sparse heatmaps did not start to learn within a few hundred iterations
on the CPU; the factorised head's centre heatmap did within ~70.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from spine.arguments import positive_float, positive_int
from spine.console import DefaultsHelpFormatter
from spine.modelmeta import ModelMeta

from .datasets import STAGE_DEFAULTS, VIEW_CUTS, Augmentation, CaseSource, PatchSampler, default_meta, volumes_for

if TYPE_CHECKING:
    import torch

    from .networks import NetworkConfig

__all__ = ["CHECKPOINT_FORMAT", "TrainConfig", "TrainResult", "add_parser", "load_checkpoint", "main", "train"]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "verse-gc-checkpoint/1"
LOCATE_ALPHA = 50.0


@dataclass
class TrainConfig:
    """Everything a training run depends on (saved in the checkpoint)."""

    stage: str
    data: str | Sequence[str]
    out: str
    iterations: int = 1000
    batch_size: int = 2
    lr: float = 1e-3
    weight_decay: float = 1e-5
    seed: int = 0
    resume: bool = False
    val_cases: int = 2
    val_data: str | None = None
    val_every: int = 200
    device: str = "auto"
    threads: int = 2
    max_cases: int | None = None
    max_minutes: float | None = None
    cache: str | None = None
    patch: tuple[int, int, int] | None = None
    spacing: tuple[float, float, float] | None = None
    sigma_mm: float | None = None
    base_channels: int | None = None
    depth: int | None = None
    trained_on: str | None = None
    init_from: str | None = None
    keep_centre: bool = False
    """Locate ("centre_label" head): the centre target is at least ``--init-from``'s own centre heatmap."""
    augment: bool = True
    rotate_deg: tuple[float, float, float] | None = None
    """Largest augmentation rotation about the z, y, x array axes (None: :class:`Augmentation`'s default)."""
    sacrum_p: float | None = None
    """Segment: probability of a sacrum negative sample (None: :class:`Augmentation`'s default, off)."""
    thick_axes: tuple[float, float, float] | None = None
    """Relative weights of the z, y, x axes for thick-slice simulation (None: :class:`Augmentation`'s, z only)."""
    thick_factor: tuple[float, float] | None = None
    """Range of a simulated slice's thickness in model-grid voxels (None: :class:`Augmentation`'s, 1.3-2)."""
    coarse_p: float | None = None
    """Probability of a coarse in-plane grid (None: :class:`Augmentation`'s, off)."""
    coarse_factor: tuple[float, float] | None = None
    """Range of a coarse pixel's width in model-grid voxels (None: :class:`Augmentation`'s, 2.3-3.6)."""
    view_cut_p: float | None = None
    """Segment: probability that the field of view ends inside the patch (None: :class:`Augmentation`'s, off)."""
    view_cut_sides: tuple[str, ...] | None = None
    """Segment: the sides a view cut is drawn from (None: :class:`Augmentation`'s, every side of ``VIEW_CUTS``)."""
    progress: bool = True


AUGMENTATION_OPTIONS = ("rotate_deg", "sacrum_p", "thick_axes", "thick_factor", "coarse_p", "coarse_factor",
                        "view_cut_p", "view_cut_sides")
"""The :class:`TrainConfig` fields that override :class:`Augmentation`'s field of the same name when not None."""


@dataclass
class TrainResult:
    """Where a run left its checkpoints and how it went."""

    last: Path
    best: Path
    iteration: int
    best_score: float
    best_iteration: int
    wall_s: float
    history: list[dict[str, Any]] = field(default_factory=list)


# ----------------------------------------------------------------------------- checkpoints


def meta_to_dict(meta: ModelMeta) -> dict[str, str]:
    """ModelMeta as the ONNX props dict (the one serialisation of the contract)."""
    return meta.to_props()


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a training checkpoint (CPU tensors) and check its format; adds ``meta`` (ModelMeta)
    and ``network_config`` (NetworkConfig)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a corrupt file
        raise ValueError(f"{path}: not a readable checkpoint ({error})") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a verse-gc checkpoint (format {CHECKPOINT_FORMAT})")
    from .networks import NetworkConfig

    checkpoint["meta"] = ModelMeta.from_props(checkpoint["meta_props"], source=str(path))
    checkpoint["network_config"] = NetworkConfig(**checkpoint["network"])
    return checkpoint


def _save(path: Path, payload: dict[str, Any]) -> None:
    import torch

    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(payload, tmp)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- losses


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - soft Dice per channel over the batch, averaged over channels; ``(N, C, z, y, x)``."""
    import torch

    p = torch.sigmoid(logits)
    dims = (0, 2, 3, 4)
    intersection = (p * target).sum(dims)
    denominator = p.sum(dims) + target.sum(dims)
    return 1.0 - ((2.0 * intersection + 1.0) / (denominator + 1.0)).mean()


def stage_loss(stage: str, logits: torch.Tensor, target: torch.Tensor, head: str = "sigmoid",
               centre_floor: torch.Tensor | None = None) -> torch.Tensor:
    """Training loss of a stage (see module docstring); ``logits`` as the network emits them.

    ``centre_floor`` (``(N, 1, z, y, x)`` probabilities, "centre_label" head only): the centre
    target is raised to it where the labelled heatmap is lower (``--keep-centre``); the label
    cross-entropy still sees only the labelled centres.
    """
    import torch
    import torch.nn.functional as F

    if centre_floor is not None and head != "centre_label":
        raise ValueError(f"a centre floor needs the 'centre_label' head, not {head!r}")
    if head == "centre_label":
        # Centre: one class-agnostic heatmap (max over the label channels), weighted BCE + Dice.
        labelled = target.amax(dim=1, keepdim=True)
        centre = labelled if centre_floor is None else torch.maximum(labelled, centre_floor)
        weight = 1.0 + LOCATE_ALPHA * centre
        bce = F.binary_cross_entropy_with_logits(logits[:, :1], centre, reduction="none")
        spatial = (bce * weight).sum() / weight.sum() + soft_dice_loss(logits[:, :1], centre)
        # Label: cross-entropy near the labelled centres (never the floor's), weighted by their heatmap.
        near = labelled[:, 0] * (labelled[:, 0] > 0.1)
        ce = F.cross_entropy(logits[:, 1:], target.argmax(dim=1), reduction="none")
        return spatial + (ce * near).sum() / torch.clamp(near.sum(), min=1e-6)
    if stage == "locate":
        weight = 1.0 + LOCATE_ALPHA * target.amax(dim=1, keepdim=True)
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        return (bce * weight).sum() / (weight.sum() * target.shape[1])
    return F.binary_cross_entropy_with_logits(logits, target) + soft_dice_loss(logits, target)


def learning_rate(iteration: int, total: int, base: float, warmup: int = 20, time_fraction: float = 0.0) -> float:
    """Linear warm-up then cosine decay to 5% of ``base``.

    Progress is the larger of the iteration fraction and ``time_fraction`` (elapsed / allowed
    wall time with ``--max-minutes``), so a run cut short by time still ends at a low rate.
    """
    if iteration < warmup:
        return base * (iteration + 1) / warmup
    progress = min(max((iteration - warmup) / max(total - warmup, 1), time_fraction), 1.0)
    return base * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress)))


# ----------------------------------------------------------------------------- data


def _case_sources(root: str, limit: int | None = None) -> list[CaseSource]:
    """The cases below ``root`` (sorted by id), each read only if its cache entry is missing."""
    from .readers import list_cases, read_case

    sources = []
    for files in list_cases(Path(root)):
        if files.ct is None:
            log.warning("%s: skipping case %s: no CT", files.mask or files.centroids, files.case_id)
            continue
        sources.append(CaseSource(files.case_id, str(files.ct), functools.partial(read_case, files)))
        if limit is not None and len(sources) >= limit:
            break
    if not sources:
        raise ValueError(f"{root}: no cases found (expected VerSe layout: rawdata/*/*_ct.nii.gz + derivatives)")
    return sources


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device available")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"--device: expected auto, cpu or cuda, got {device!r}")
    return device


def build_meta(config: TrainConfig, trained_on: str) -> ModelMeta:
    """The stage's ModelMeta with this run's overrides."""
    return default_meta(config.stage, spacing_zyx_mm=config.spacing, patch_shape_zyx=config.patch,
                        heatmap_sigma_mm=config.sigma_mm, trained_on=trained_on)


def build_network_config(config: TrainConfig) -> NetworkConfig:
    """The stage's default architecture with this run's overrides."""
    from .networks import NetworkConfig, default_network_config

    base = default_network_config(config.stage)
    return NetworkConfig(
        base_channels=config.base_channels or base.base_channels,
        depth=config.depth or base.depth,
        max_channels=base.max_channels,
        negative_slope=base.negative_slope,
        output_bias=base.output_bias,
        head=base.head,
    )


# ----------------------------------------------------------------------------- training


def train(config: TrainConfig) -> TrainResult:
    """Run (or resume) one stage's training; returns where the checkpoints are."""
    import torch
    from tqdm import tqdm

    from .networks import ProbabilityModel, build_network, count_parameters, weights_from_onnx
    from .validation import torch_predictor, validate

    if config.stage not in STAGE_DEFAULTS:
        raise ValueError(f"unknown stage {config.stage!r}; expected one of {tuple(STAGE_DEFAULTS)}")
    if config.iterations < 1 or config.batch_size < 1 or config.lr <= 0:
        raise ValueError("iterations and batch size must be positive, lr > 0")
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    last_path, best_path = out / "last.pt", out / "best.pt"
    handler = logging.FileHandler(out / "train.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("export").addHandler(handler)
    try:
        torch.set_num_threads(max(int(config.threads), 1))
        device = _resolve_device(config.device)
        checkpoint = load_checkpoint(last_path) if config.resume else None
        if config.resume and checkpoint["meta"].stage != config.stage:
            raise ValueError(f"{last_path}: checkpoint is for stage {checkpoint['meta'].stage}, not {config.stage}")

        # Data: the case split is fixed by sorted case ids and the seed-independent order.
        roots = [config.data] if isinstance(config.data, str) else list(config.data)
        all_cases = sorted((c for root in roots for c in _case_sources(root, config.max_cases)),
                           key=lambda c: c.case_id)
        if len({c.case_id for c in all_cases}) != len(all_cases):
            raise ValueError(f"--data {' '.join(roots)}: a case id appears in two folders")
        if config.val_data:
            train_cases, val_cases = all_cases, _case_sources(config.val_data, max(int(config.val_cases), 1))
        else:
            k = min(max(int(config.val_cases), 0), len(all_cases) - 1)
            train_cases, val_cases = all_cases[: len(all_cases) - k], all_cases[len(all_cases) - k:]
        trained_on = config.trained_on or (f"{'+'.join(Path(r).resolve().name for r in roots)}: "
                                           f"{len(train_cases)} cases "
                                           f"({train_cases[0].case_id} .. {train_cases[-1].case_id})")
        if checkpoint is not None:
            meta: ModelMeta = checkpoint["meta"]
            network_config: NetworkConfig = checkpoint["network_config"]
        else:
            meta = build_meta(config, trained_on)
            network_config = build_network_config(config)
        cache = config.cache or str(out / "cache")
        margin = STAGE_DEFAULTS[config.stage].crop_margin_mm
        t0 = time.time()
        train_volumes = volumes_for(train_cases, meta, cache, crop_margin_mm=margin)
        val_volumes = volumes_for(val_cases, meta, cache, crop_margin_mm=margin)
        del all_cases, train_cases
        log.info("%s: %d training and %d validation volumes at %s mm ready in %.1f s", meta.stage,
                 len(train_volumes), len(val_volumes), meta.spacing_zyx_mm, time.time() - t0)

        # Model, optimiser and random states.
        torch.manual_seed(config.seed)
        rng = np.random.default_rng(config.seed)
        network = build_network(meta, network_config).to(device)
        optimizer = torch.optim.AdamW(network.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        start, best_score, best_iteration, wall_s = 0, -math.inf, 0, 0.0
        history: list[dict[str, Any]] = []
        if checkpoint is None and config.init_from:
            count = weights_from_onnx(network, config.init_from)
            log.info("%s: started from the weights of %s (%d tensors)", meta.stage, config.init_from, count)
        teacher = None
        if config.keep_centre:
            if network_config.head != "centre_label" or not config.init_from:
                raise ValueError("--keep-centre needs the locate stage's 'centre_label' head and --init-from")
            # A frozen copy of the starting network: its centre heatmap is the floor of the target.
            teacher = build_network(meta, network_config).to(device)
            weights_from_onnx(teacher, config.init_from)
            teacher.eval().requires_grad_(False)
            log.info("%s: --keep-centre: the centre target is at least %s's own centre heatmap", meta.stage,
                     config.init_from)
        if checkpoint is not None:
            network.load_state_dict(checkpoint["model"])
            optimizer.load_state_dict(checkpoint["optimizer"])
            rng.bit_generator.state = checkpoint["rng"]["numpy"]
            torch.set_rng_state(checkpoint["rng"]["torch"])
            start = int(checkpoint["iteration"])
            best_score, best_iteration = float(checkpoint["best_score"]), int(checkpoint["best_iteration"])
            wall_s = float(checkpoint.get("wall_s", 0.0))
            history = list(checkpoint.get("history", []))
            log.info("resumed %s at iteration %d (best %.4g at %d)", last_path, start, best_score, best_iteration)
        params = count_parameters(network)
        log.info("%s: U-Net %s, %d parameters, patch %s, batch %d, device %s", meta.stage, network_config,
                 params, meta.patch_shape_zyx, config.batch_size, device)
        augmentation = Augmentation.none()
        if config.augment:
            given = {name: getattr(config, name) for name in AUGMENTATION_OPTIONS}
            augmentation = replace(Augmentation(), **{name: v for name, v in given.items() if v is not None})
        sampler = PatchSampler(train_volumes, meta, rng, augmentation)

        def save(path: Path, iteration: int) -> None:
            _save(path, {
                "format": CHECKPOINT_FORMAT,
                "meta_props": meta_to_dict(meta),
                "network": network_config.to_dict(),
                "parameters": params,
                "model": {k: v.detach().cpu() for k, v in network.state_dict().items()},
                "optimizer": optimizer.state_dict(),
                "rng": {"numpy": rng.bit_generator.state, "torch": torch.get_rng_state()},
                "iteration": iteration,
                "best_score": best_score,
                "best_iteration": best_iteration,
                "wall_s": wall_s + (time.time() - session_start),
                "history": history,
                "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()},
                "train_cases": [v.case_id for v in train_volumes],
                "val_cases": [v.case_id for v in val_volumes],
            })

        session_start = time.time()
        deadline = None if config.max_minutes is None else session_start + 60.0 * config.max_minutes
        iteration = start
        running = None
        bar = tqdm(range(start, config.iterations), initial=start, total=config.iterations, desc=meta.stage,
                   mininterval=15.0, disable=not config.progress, dynamic_ncols=True)
        for iteration in bar:
            time_fraction = 0.0 if deadline is None else (time.time() - session_start) / (deadline - session_start)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(iteration, config.iterations, config.lr, time_fraction=time_fraction)
            x, y = sampler.sample(config.batch_size)
            network.train()
            inputs = torch.from_numpy(x).to(device)
            floor = None
            if teacher is not None:
                with torch.no_grad():
                    floor = torch.sigmoid(teacher(inputs)[:, :1])
            logits = network(inputs)
            loss = stage_loss(meta.stage, logits, torch.from_numpy(y).to(device), network_config.head, floor)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"iteration {iteration}: loss is {loss.item()}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(network.parameters(), 12.0)
            optimizer.step()
            running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
            bar.set_postfix(loss=f"{running:.4f}", refresh=False)
            done = iteration + 1
            out_of_time = deadline is not None and time.time() > deadline
            if done % config.val_every == 0 or done == config.iterations or out_of_time:
                record: dict[str, Any] = {"iteration": done, "loss": running,
                                          "lr": optimizer.param_groups[0]["lr"],
                                          "wall_s": wall_s + time.time() - session_start}
                if val_volumes:
                    t_val = time.time()
                    metrics = validate(torch_predictor(ProbabilityModel(network), device), val_volumes, meta)
                    record.update(metrics.values)
                    record["score"] = metrics.score
                    improved = metrics.score > best_score
                    log.info("%s it %d loss %.4f | val %s | %.1f s%s", meta.stage, done, running, metrics.summary(),
                             time.time() - t_val, " (best)" if improved else "")
                else:
                    improved = True
                    log.info("%s it %d loss %.4f (no validation cases)", meta.stage, done, running)
                history.append(record)
                with open(out / "history.jsonl", "a", encoding="utf-8") as stream:
                    stream.write(json.dumps(record) + "\n")
                if improved:
                    best_score = record.get("score", 0.0)
                    best_iteration = done
                save(last_path, done)
                if improved:
                    save(best_path, done)
            if out_of_time:
                log.warning("%s: --max-minutes reached at iteration %d; stopping", meta.stage, done)
                break
        bar.close()
        iteration = iteration + 1 if config.iterations > start else start
        if not best_path.exists() and last_path.exists():
            import shutil

            shutil.copyfile(last_path, best_path)
        total_wall = wall_s + time.time() - session_start
        log.info("%s: finished at iteration %d in %.1f s of training (best %.4g at %d)", meta.stage, iteration,
                 total_wall, best_score, best_iteration)
        return TrainResult(last_path, best_path, iteration, best_score, best_iteration, total_wall, history)
    finally:
        logging.getLogger("export").removeHandler(handler)
        handler.close()


# ----------------------------------------------------------------------------- CLI


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of ``train`` (shared by the subcommand and ``python -m export.train``)."""
    parser.add_argument("stage", choices=tuple(STAGE_DEFAULTS), help="which stage to train")
    parser.add_argument("--data", required=True, nargs="+", metavar="DIR",
                        help="VerSe-layout data folder(s) (e.g. made by `export synth` and `export.real_cases`)")
    parser.add_argument("--out", required=True, help="output folder: last.pt, best.pt, train.log, history.jsonl")
    parser.add_argument("--iterations", type=positive_int, default=1000, help="total iterations")
    parser.add_argument("--batch-size", type=positive_int, default=2, help="patches per iteration")
    parser.add_argument("--lr", type=positive_float, default=1e-3, help="peak learning rate (AdamW, cosine)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the initial weights, patch sampling and augmentation (the case split does not "
                             "depend on it)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    parser.add_argument("--val-cases", type=int, default=2,
                        help="validation cases: held out from the end of --data, or the first K of --val-data")
    parser.add_argument("--val-data", help="separate validation folder (then all of --data trains)")
    parser.add_argument("--val-every", type=positive_int, default=200, help="validate + checkpoint every N its")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where torch trains: auto = CUDA when available, else the CPU")
    parser.add_argument("--threads", type=positive_int, default=2, help="torch CPU threads")
    parser.add_argument("--max-cases", type=positive_int, help="read at most N cases")
    parser.add_argument("--max-minutes", type=positive_float, help="stop (with a checkpoint) after this wall time")
    parser.add_argument("--cache", help="preprocessing cache folder (default OUT/cache)")
    parser.add_argument("--patch", type=positive_int, nargs=3, metavar=("Z", "Y", "X"), help="patch shape override")
    parser.add_argument("--spacing", type=positive_float, nargs=3, metavar=("Z", "Y", "X"), help="spacing in mm")
    parser.add_argument("--sigma-mm", type=positive_float, help="heatmap sigma override (mm)")
    parser.add_argument("--base-channels", type=positive_int, help="U-Net width at full resolution")
    parser.add_argument("--depth", type=positive_int, help="U-Net resolution levels")
    parser.add_argument("--init-from", metavar="MODEL.onnx",
                        help="start from an exported model's weights (same stage and architecture): fine-tuning")
    parser.add_argument("--keep-centre", action="store_true",
                        help="locate, with --init-from: the centre target is at least the starting model's own centre "
                             "heatmap, so labels that cover part of the spine teach levels without unlearning centres")
    parser.add_argument("--trained-on", help="provenance text for the model metadata")
    parser.add_argument("--no-augment", action="store_true", help="disable augmentation")
    parser.add_argument("--rotate-deg", type=float, nargs="+", metavar="DEG",
                        help="largest augmentation rotation: one angle for every axis, or three about the z, y, x "
                             "axes (x: the sagittal tilt); default 12")
    parser.add_argument("--sacrum-p", type=float, metavar="P",
                        help="segment: probability of a sacrum negative sample (a heatmap on S1, an empty target), "
                             "in [0, 1]; default 0")
    parser.add_argument("--thick-axes", type=float, nargs=3, metavar=("Z", "Y", "X"),
                        help="relative weights of the axes a thick-slice simulation thickens (sagittal scans: x); "
                             "default 1 0 0")
    parser.add_argument("--thick-factor", type=float, nargs=2, metavar=("LOW", "HIGH"),
                        help="range of a simulated slice's thickness in model-grid voxels, 1 <= LOW <= HIGH <= 8 "
                             "(segment's 1.5 mm grid: 5 mm slices are 3.3); default 1.3 2")
    parser.add_argument("--coarse-p", type=float, metavar="P",
                        help="probability of a coarse in-plane grid (y and x averaged over --coarse-factor voxels, z "
                             "over --thick-factor's: head-and-neck CTs' 3.5-5.4 mm pixels), in [0, 1]; default 0")
    parser.add_argument("--coarse-factor", type=float, nargs=2, metavar=("LOW", "HIGH"),
                        help="range of a coarse pixel's width in model-grid voxels, 1 <= LOW <= HIGH <= 8 "
                             "(segment's 1.5 mm grid: 5 mm pixels are 3.3); default 2.3 3.6")
    parser.add_argument("--view-cut-p", type=float, metavar="P",
                        help="segment: probability that the field of view ends inside the patch (air beyond a plane "
                             "through the vertebra, behind, beside, above or below it; the target empty there), in "
                             "[0, 1]; default 0")
    parser.add_argument("--view-cut-sides", nargs="+", choices=tuple(VIEW_CUTS), metavar="SIDE",
                        help=f"segment: the sides a view cut is drawn from ({', '.join(VIEW_CUTS)}); default all")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        stage=args.stage, data=args.data, out=args.out, iterations=args.iterations, batch_size=args.batch_size,
        lr=args.lr, seed=args.seed, resume=args.resume, val_cases=args.val_cases, val_data=args.val_data,
        val_every=args.val_every, device=args.device, threads=args.threads, max_cases=args.max_cases,
        max_minutes=args.max_minutes, cache=args.cache,
        patch=tuple(args.patch) if args.patch else None,
        spacing=tuple(args.spacing) if args.spacing else None,
        sigma_mm=args.sigma_mm, base_channels=args.base_channels, depth=args.depth, trained_on=args.trained_on,
        init_from=args.init_from, keep_centre=args.keep_centre,
        augment=not args.no_augment, progress=not args.no_progress, rotate_deg=_rotation(args.rotate_deg),
        sacrum_p=_probability(args.sacrum_p, "--sacrum-p"), thick_axes=_axis_weights(args.thick_axes),
        view_cut_p=_probability(args.view_cut_p, "--view-cut-p"),
        thick_factor=_voxels(args.thick_factor, "--thick-factor"), coarse_p=_probability(args.coarse_p, "--coarse-p"),
        coarse_factor=_voxels(args.coarse_factor, "--coarse-factor"),
        view_cut_sides=tuple(args.view_cut_sides) if args.view_cut_sides else None,
    )


def _axis_weights(values: Sequence[float] | None) -> tuple[float, float, float] | None:
    if values is None:
        return None
    if len(values) != 3 or any(v < 0 for v in values) or not sum(values) > 0:
        raise SystemExit(f"--thick-axes: three non-negative weights, not all 0, got {list(values)}")
    return (float(values[0]), float(values[1]), float(values[2]))


def _voxels(values: Sequence[float] | None, option: str) -> tuple[float, float] | None:
    if values is None:
        return None
    low, high = (float(v) for v in values)
    if not 1.0 <= low <= high <= 8.0:
        raise SystemExit(f"{option}: 1 <= LOW <= HIGH <= 8 voxels, got {list(values)}")
    return (low, high)


def _rotation(values: Sequence[float] | None) -> tuple[float, float, float] | None:
    if values is None:
        return None
    if len(values) not in (1, 3) or any(v < 0 or v > 90 for v in values):
        raise SystemExit("--rotate-deg: one or three angles in [0, 90] degrees")
    z, y, x = (float(values[0]),) * 3 if len(values) == 1 else (float(v) for v in values)
    return (z, y, x)


def _probability(value: float | None, option: str) -> float | None:
    if value is not None and not 0.0 <= value <= 1.0:
        raise SystemExit(f"{option}: a probability in [0, 1], got {value}")
    return value


def run(args: argparse.Namespace) -> int:
    """Entry point of the ``train`` subcommand."""
    result = train(config_from_args(args))
    log.info("checkpoints: %s (best: %s, iteration %d)", result.last, result.best, result.best_iteration)
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:  # argparse's _SubParsersAction
    """Register ``train`` on an argparse subparsers object."""
    parser = subparsers.add_parser("train", help="train one stage's network",
                                   description=__doc__.split("\n\n")[0],
                                   formatter_class=DefaultsHelpFormatter)
    configure_parser(parser)
    parser.set_defaults(func=run, handler=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = configure_parser(argparse.ArgumentParser(prog="python -m export.train",
                                                      formatter_class=DefaultsHelpFormatter))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except (ValueError, FileNotFoundError, FloatingPointError) as error:
        log.error("%s", error)
        return 1


if __name__ == "__main__":
    sys.exit(main())
