"""What a model says about itself: the ONNX ``metadata_props`` contract.

Each stage is one ONNX file whose metadata carries everything inference needs
(DESIGN.md, "Models and ONNX"). ``export`` writes it with :meth:`ModelMeta.to_props`,
the algorithm reads it with :meth:`ModelMeta.from_props` (from ONNX Runtime's
``custom_metadata_map``) and nothing about a model is hard-coded anywhere else.

Array conventions: tensors are ``(batch, channel, z, y, x)`` on an identity-direction
(LPS-aligned) grid: array axis 0 runs inferior -> superior, 1 anterior -> posterior,
2 right -> left, the way SimpleITK lays out an image with identity direction.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from spine.labels import label_of

__all__ = ["PREFIX", "SCHEMA_VERSION", "STAGES", "Intensity", "ModelMeta", "ModelMetaError", "json_props",
           "json_values"]

PREFIX = "verse_gc."
SCHEMA_VERSION = 1
STAGES = ("detect", "locate", "segment")


class ModelMetaError(ValueError):
    """Metadata missing or inconsistent; the message names the key."""


@dataclass(frozen=True)
class Intensity:
    """HU -> network input: ``(clip(hu, hu_min, hu_max) - center) / scale``."""

    hu_min: float = -1000.0
    hu_max: float = 2000.0
    center: float = 0.0
    scale: float = 1000.0

    def apply(self, hu: np.ndarray) -> np.ndarray:
        """Map an HU array to float32 network input."""
        out = np.clip(np.asarray(hu, dtype=np.float32), self.hu_min, self.hu_max)
        out -= np.float32(self.center)
        out /= np.float32(self.scale)
        return out

    @property
    def background(self) -> float:
        """Network value of air (-1024 HU), used to pad patches outside the image."""
        return float((np.clip(-1024.0, self.hu_min, self.hu_max) - self.center) / self.scale)


@dataclass(frozen=True)
class ModelMeta:
    """Self-description of one stage's ONNX model.

    - ``stage``: "detect" (coarse spine heatmap), "locate" (one heatmap per vertebra),
      "segment" (one vertebra's binary mask from CT + that vertebra's heatmap).
    - ``spacing_zyx_mm``: voxel spacing the network works at, array order.
    - ``patch_shape_zyx``: the fixed spatial input shape of the exported graph.
    - ``input_channels``: e.g. ("ct",) or ("ct", "heatmap").
    - ``channels``: output channel names: ("spine",), vertebra names "C1".."L6","T13" in
      the locate stage's order, or ("vertebra",).
    - ``output``: "probability" when the graph ends in a sigmoid (values in [0, 1]).
    - ``heatmap_sigma_mm``: Gaussian sigma of the heatmaps the stage was trained on.
    - ``peak_threshold``: locate only, the channel-max value a heatmap peak must reach to be a
      candidate: how a model's heatmaps are calibrated is the model's own (absent in older
      files: 0.3).
    """

    stage: str
    spacing_zyx_mm: tuple[float, float, float]
    patch_shape_zyx: tuple[int, int, int]
    input_channels: tuple[str, ...]
    channels: tuple[str, ...]
    intensity: Intensity = field(default_factory=Intensity)
    output: str = "probability"
    heatmap_sigma_mm: float = 0.0
    peak_threshold: float = 0.3
    orientation: str = "LPS"
    opset: int = 17
    trained_on: str = ""
    commit: str = ""
    version: str = ""
    notes: str = ""

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ModelMetaError(f"stage: {self.stage!r} is not one of {STAGES}")
        if len(self.spacing_zyx_mm) != 3 or not all(float(s) > 0 for s in self.spacing_zyx_mm):
            raise ModelMetaError(f"spacing_zyx_mm: expected three positive numbers, got {self.spacing_zyx_mm}")
        if len(self.patch_shape_zyx) != 3 or not all(int(s) > 0 for s in self.patch_shape_zyx):
            raise ModelMetaError(f"patch_shape_zyx: expected three positive ints, got {self.patch_shape_zyx}")
        if not self.input_channels or not self.channels:
            raise ModelMetaError("input_channels and channels must not be empty")
        if self.orientation != "LPS":
            raise ModelMetaError(f"orientation: only 'LPS' is supported, got {self.orientation!r}")
        if self.output not in ("probability", "logits"):
            raise ModelMetaError(f"output: expected 'probability' or 'logits', got {self.output!r}")
        if self.stage == "locate":
            for name in self.channels:
                try:
                    label_of(name)
                except ValueError:
                    raise ModelMetaError(f"channels: {name!r} is not a vertebra name") from None
            if self.heatmap_sigma_mm <= 0:
                raise ModelMetaError("heatmap_sigma_mm: the locate stage needs a positive sigma")
        if not 0.0 < float(self.peak_threshold) < 1.0:
            raise ModelMetaError(f"peak_threshold: expected a value in (0, 1), got {self.peak_threshold}")
        if self.stage == "segment" and "heatmap" in self.input_channels and self.heatmap_sigma_mm <= 0:
            raise ModelMetaError("heatmap_sigma_mm: a segment stage fed a heatmap needs its sigma")

    @property
    def channel_labels(self) -> tuple[int, ...]:
        """VerSe ids of the output channels (locate stage only)."""
        return tuple(label_of(name) for name in self.channels)

    def to_props(self) -> dict[str, str]:
        """Flat ``metadata_props`` (string -> string) for the ONNX file."""
        return json_props(self)

    @classmethod
    def from_props(cls, props: Mapping[str, str], *, source: str = "model") -> ModelMeta:
        """Parse and validate metadata; raises :class:`ModelMetaError` naming ``source`` and key."""
        schema = props.get(f"{PREFIX}schema")
        if schema is None:
            raise ModelMetaError(f"{source}: no '{PREFIX}schema' in the ONNX metadata: "
                                 "not a verse-gc model (export it with `python -m export onnx`)")
        if schema != str(SCHEMA_VERSION):
            raise ModelMetaError(f"{source}: metadata schema {schema} is not supported (expected "
                                 f"{SCHEMA_VERSION})")
        values = json_values(cls, props, source=source,
                             required=("stage", "spacing_zyx_mm", "patch_shape_zyx", "input_channels", "channels"))
        try:
            values["spacing_zyx_mm"] = tuple(float(v) for v in values["spacing_zyx_mm"])
            values["patch_shape_zyx"] = tuple(int(v) for v in values["patch_shape_zyx"])
            values["input_channels"] = tuple(str(v) for v in values["input_channels"])
            values["channels"] = tuple(str(v) for v in values["channels"])
            if "intensity" in values:
                values["intensity"] = Intensity(**values["intensity"])
            return cls(**values)
        except ModelMetaError as error:
            raise ModelMetaError(f"{source}: {error}") from None
        except (TypeError, ValueError) as error:
            raise ModelMetaError(f"{source}: malformed metadata ({error})") from None


def json_props(meta: Any) -> dict[str, str]:
    """A metadata dataclass as flat ONNX ``metadata_props``: ``verse_gc.schema`` and each field JSON-encoded under
    ``verse_gc.<field>`` (:class:`ModelMeta`, and the chain-context model's ``ContextMeta``)."""
    return {f"{PREFIX}schema": str(SCHEMA_VERSION), **{PREFIX + k: json.dumps(v) for k, v in asdict(meta).items()}}


def json_values(cls: type, props: Mapping[str, str], *, source: str = "model",
                required: tuple[str, ...] = ()) -> dict[str, Any]:
    """The decoded JSON value of each of dataclass ``cls``'s fields found in ``props`` (the inverse of
    :func:`json_props`, before the class's own conversions and checks); :class:`ModelMetaError` naming
    ``source`` and the key when one is not JSON or a ``required`` one is missing."""
    values: dict[str, Any] = {}
    for f in fields(cls):
        key = PREFIX + f.name
        if key not in props:
            if f.name in required:
                raise ModelMetaError(f"{source}: metadata key '{key}' is missing")
            continue
        try:
            values[f.name] = json.loads(props[key])
        except json.JSONDecodeError:
            raise ModelMetaError(f"{source}: metadata key '{key}' is not JSON") from None
    return values
