"""File-system layout of the Grand Challenge containers, in one place.

No other module builds an ``/input`` or ``/output`` path by hand: they take a
:class:`AlgorithmLayout` or :class:`EvaluationLayout`, whose defaults are GC's and whose
roots can point at local folders for tests and researchers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CENTROIDS_OUTPUT",
    "CT_SOCKET",
    "SEGMENTATION_OUTPUT",
    "AlgorithmLayout",
    "EvaluationLayout",
    "MODEL_DIR_ENV",
    "SocketSpec",
]


@dataclass(frozen=True)
class SocketSpec:
    """A socket of the challenge: slug and the relative path of its file or folder."""

    slug: str
    relative_path: str


CT_SOCKET = SocketSpec("ct-image", "images/ct")
SEGMENTATION_OUTPUT = SocketSpec("vertebrae-segmentation", "images/vertebrae-segmentation")
CENTROIDS_OUTPUT = SocketSpec("vertebrae-centroids", "vertebrae-centroids.json")

SEGMENTATION_FILE_NAME = "output.mha"
MODEL_DIR_ENV = "VERSE_GC_MODELS"


@dataclass(frozen=True)
class AlgorithmLayout:
    """Where the algorithm container reads and writes."""

    input_dir: Path = Path("/input")
    output_dir: Path = Path("/output")
    gc_model_dir: Path = Path("/opt/ml/model")

    @property
    def inputs_json(self) -> Path:
        return self.input_dir / "inputs.json"

    def input_socket_dir(self, relative_path: str = CT_SOCKET.relative_path) -> Path:
        return self.input_dir / relative_path

    @property
    def segmentation_path(self) -> Path:
        return self.output_dir / SEGMENTATION_OUTPUT.relative_path / SEGMENTATION_FILE_NAME

    @property
    def centroids_path(self) -> Path:
        return self.output_dir / CENTROIDS_OUTPUT.relative_path

    @property
    def report_path(self) -> Path:
        return self.output_dir / "run-report.json"


@dataclass(frozen=True)
class EvaluationLayout:
    """Where the evaluation container reads and writes."""

    input_dir: Path = Path("/input")
    ground_truth_dir: Path = Path("/opt/ml/input/data/ground_truth")
    metrics_path: Path = Path("/output/metrics.json")

    @property
    def predictions_json(self) -> Path:
        return self.input_dir / "predictions.json"

    def job_output(self, pk: str, relative_path: str) -> Path:
        """File or folder of one job's output socket: ``/input/<pk>/output/<relative_path>``."""
        return self.input_dir / pk / "output" / relative_path
