"""The three stage models: where they are, which execution provider runs them, how a patch batch runs.

Model lookup order (first folder holding ``detect.onnx``, ``locate.onnx`` and ``segment.onnx``):

1. ``/opt/ml/model`` (:attr:`spine.layout.AlgorithmLayout.gc_model_dir`): the tarball GC extracts
   when a model is uploaded separately from the image (the files at its root or in a ``models/``
   folder inside it);
2. ``--models DIR``, else the environment variable ``VERSE_GC_MODELS``;
3. the models bundled with the code, ``algorithm/models/``.

Everything a stage needs (spacing, patch shape, channels, intensity mapping, sigma) comes from
the model's own metadata (:class:`spine.modelmeta.ModelMeta`); nothing is hard-coded here.

A folder may also hold optional models beside the three stages':

- ``sacrum.onnx`` (:data:`SACRUM_FILE`): trained to outline nothing where its heatmap sits on the sacrum,
  which the pipeline asks about the chain's lowest candidates (:mod:`algorithm.sacrum`); without it that
  check is skipped;
- ``outline.onnx`` (:data:`OUTLINE_FILE`): the model whose outlines place the candidates
  (:mod:`algorithm.recentre`) and measure the sacrum check's ratios, when that is not the segment model:
  the recentring's rules and the sacrum check's threshold were measured on one model's outlines, and a
  better segmenter need not outline alike. Without it, or when it does not load, the segment model outlines;
- ``skull.onnx`` (:data:`SKULL_FILE`), a detect-stage model: where the foramen magnum is, the skull base that
  anchors the chain's head at C1 (:mod:`algorithm.skull`); without it the chain has no anchor at its head.

Execution providers: ``auto`` picks CUDA when ONNX Runtime offers it, the NVIDIA driver reports
a GPU (asked directly, so a CPU-only machine never makes ORT try CUDA and log errors) and the
sessions really come up on it (ORT falls back to the CPU when, say, cuDNN is missing; then
the CPU sessions are used and a warning logged); TensorRT goes in front of CUDA when
``VERSE_GC_TENSORRT=1``. ``cuda`` insists (an error otherwise), ``cpu`` never tries. On the GPU
a batch goes through ``io_binding``: the input copied to the device once, the output
allocated there and copied back once.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from algorithm.native import native_stderr
from algorithm.progress import advance
from spine.layout import MODEL_DIR_ENV, AlgorithmLayout
from spine.modelmeta import STAGES, ModelMeta, ModelMetaError

__all__ = [
    "BUNDLED_MODEL_DIR",
    "DEVICES",
    "SUPPORTED_INPUT_CHANNELS",
    "TENSORRT_ENV",
    "Device",
    "ModelError",
    "ModelSource",
    "Models",
    "StageModel",
    "find_model_dir",
    "has_stage_files",
    "load_models",
    "provider_chain",
]

log = logging.getLogger(__name__)

BUNDLED_MODEL_DIR = Path(__file__).resolve().parent / "models"
TENSORRT_ENV = "VERSE_GC_TENSORRT"
DEVICES = ("auto", "cpu", "cuda")
SUPPORTED_INPUT_CHANNELS = frozenset({"ct", "heatmap"})
"""Input channel names the pipeline knows how to build (CT patch, that vertebra's Gaussian)."""

Device = Literal["auto", "cpu", "cuda"]


class ModelError(RuntimeError):
    """Models missing, unreadable or inconsistent with their metadata; the message names the file."""


@dataclass(frozen=True)
class ModelSource:
    """The folder the models were taken from and why (which rule of the lookup order)."""

    directory: Path
    rule: str  # "gc-model-dir", "--models", "VERSE_GC_MODELS", "bundled"


def has_stage_files(directory: Path) -> bool:
    """True when ``directory`` holds the three stage files."""
    return all((directory / f"{stage}.onnx").is_file() for stage in STAGES)


def find_model_dir(
    *,
    layout: AlgorithmLayout | None = None,
    models: str | os.PathLike[str] | None = None,
    environ: dict[str, str] | None = None,
    bundled: Path = BUNDLED_MODEL_DIR,
) -> ModelSource:
    """Apply the lookup order (module docstring); raise :class:`ModelError` naming what was tried.

    An explicit ``models`` (or ``VERSE_GC_MODELS``) folder that lacks a stage file is an error,
    not a reason to fall through to the bundled models silently.
    """
    layout = layout or AlgorithmLayout()
    environ = dict(os.environ) if environ is None else environ
    for candidate in (layout.gc_model_dir, layout.gc_model_dir / "models"):
        if has_stage_files(candidate):
            if models:
                log.warning("--models %s not used: %s holds models (GC's model tarball comes first)", models,
                            candidate)
            return ModelSource(candidate, "gc-model-dir")
    explicit, rule = (models, "--models") if models else (environ.get(MODEL_DIR_ENV) or None, MODEL_DIR_ENV)
    if explicit:
        directory = Path(explicit)
        if not has_stage_files(directory):
            missing = [f"{s}.onnx" for s in STAGES if not (directory / f"{s}.onnx").is_file()]
            raise ModelError(f"{directory}: no {', '.join(missing)} (models folder from {rule})")
        return ModelSource(directory, rule)
    if has_stage_files(bundled):
        return ModelSource(bundled, "bundled")
    raise ModelError(f"{bundled}: no models found (looked in {layout.gc_model_dir}, {MODEL_DIR_ENV} and the "
                     "bundled folder); pass --models DIR")


@functools.cache
def _ort() -> Any:
    """ONNX Runtime, imported once with its default logger at errors only.

    Its environment comes up on first use and may warn straight to stderr (e.g. that it cannot
    persist a telemetry id on a read-only file system): that text is logged at debug level.
    """
    with native_stderr() as native:
        import onnxruntime

        onnxruntime.set_default_logger_severity(3)
        onnxruntime.get_available_providers()
    for line in native:
        log.debug("onnxruntime: %s", line)
    return onnxruntime


def cuda_devices() -> int:
    """CUDA devices the NVIDIA driver reports; 0 without a driver (``libcuda.so.1``) or a GPU.

    Asked before any CUDA session is made, so that a CPU-only machine never makes ONNX Runtime
    try (and log errors about) its CUDA provider.
    """
    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    try:
        if driver.cuInit(0) != 0:
            return 0
        count = ctypes.c_int(0)
        if driver.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
        return int(count.value)
    except AttributeError:
        return 0


def provider_chain(device: Device, available: Sequence[str], *, gpus: int, tensorrt: bool = False) -> list[Any]:
    """Execution providers to ask ONNX Runtime for, best first.

    Pure: ``available`` is ORT's provider list, ``gpus`` the driver's device count. Raises
    :class:`ModelError` when ``device="cuda"`` and ORT has no CUDA provider or there is no GPU.
    """
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    has_cuda = "CUDAExecutionProvider" in available
    if device == "cpu" or (device == "auto" and not (has_cuda and gpus > 0)):
        return ["CPUExecutionProvider"]
    if not has_cuda:
        raise ModelError("--device cuda: this ONNX Runtime has no CUDAExecutionProvider "
                         f"(available: {', '.join(available)}): it is the CPU build. For the GPU, replace it with the "
                         "CUDA build, never beside it: pip uninstall -y onnxruntime && "
                         "pip install -e '.[algorithm-gpu]' -c constraints.txt")
    if gpus <= 0:
        raise ModelError("--device cuda: no CUDA GPU found (the NVIDIA driver, libcuda.so.1, is missing or reports "
                         "no device; run the container with --gpus all)")
    chain: list[Any] = []
    if tensorrt and "TensorrtExecutionProvider" in available:
        cache = Path(os.environ.get("TMPDIR", "/tmp")) / "verse-gc-trt-cache"
        chain.append(("TensorrtExecutionProvider", {
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache),
            "trt_fp16_enable": False,
        }))
    chain.append(("CUDAExecutionProvider", {"device_id": 0}))
    chain.append("CPUExecutionProvider")
    return chain


def _preload_cuda_libraries() -> None:
    """Load CUDA/cuDNN from the pip ``nvidia-*`` wheels (onnxruntime-gpu >= 1.21); harmless elsewhere."""
    ort = _ort()
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    try:
        preload()
    except Exception as error:  # a missing library only means the CPU will be used
        log.debug("onnxruntime.preload_dlls failed: %s", error)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class StageModel:
    """One stage: its ONNX Runtime session, its metadata, how to run a batch of patches."""

    stage: str
    path: Path
    meta: ModelMeta
    session: Any
    input_name: str
    output_name: str
    on_gpu: bool
    max_batch: int | None  # the graph's fixed batch size, None when the batch axis is dynamic
    sha256: str

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    @property
    def batch_size(self) -> int:
        """Patches per call: the graph's fixed batch, else 4 on the GPU and 1 on the CPU (no gain there)."""
        if self.max_batch is not None:
            return self.max_batch
        return 4 if self.on_gpu else 1

    def run(self, batch: np.ndarray) -> np.ndarray:
        """``(B, C_in, pz, py, px)`` float32 network input -> ``(B, C_out, pz, py, px)`` probabilities.

        ``output == "logits"`` in the metadata gets a sigmoid here, so every stage downstream
        sees values in [0, 1].
        """
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if self.max_batch is not None and batch.shape[0] != self.max_batch:
            return self._run_fixed_batch(batch)  # its chunks come back here
        advance(batch.shape[0])  # the stage's progress bar, on a terminal
        if self.on_gpu:
            out = self._run_io_binding(batch)
        else:
            out = self.session.run([self.output_name], {self.input_name: batch})[0]
        out = np.asarray(out, dtype=np.float32)
        if self.meta.output == "logits":
            out = _sigmoid(out)
        return out

    def _run_fixed_batch(self, batch: np.ndarray) -> np.ndarray:
        """A graph exported with a fixed batch size: run in chunks of it, padding the last one."""
        size = int(self.max_batch or 1)
        parts = []
        for first in range(0, batch.shape[0], size):
            chunk = batch[first:first + size]
            count = chunk.shape[0]
            if count < size:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], size - count, axis=0)])
            parts.append(self.run(chunk)[:count])
        return np.concatenate(parts)

    def _run_io_binding(self, batch: np.ndarray) -> np.ndarray:
        """Run on the GPU: input copied to the device once, output allocated there, one copy back."""
        ort = _ort()
        binding = self.session.io_binding()
        device_input = ort.OrtValue.ortvalue_from_numpy(batch, "cuda", 0)
        binding.bind_ortvalue_input(self.input_name, device_input)
        binding.bind_output(self.output_name, "cuda", 0)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def describe(self) -> dict[str, Any]:
        """What the run report says about this model."""
        return {
            "path": str(self.path),
            "sha256": self.sha256,
            "version": self.meta.version,
            "trained_on": self.meta.trained_on,
            "commit": self.meta.commit,
            "spacing_zyx_mm": list(self.meta.spacing_zyx_mm),
            "patch_shape_zyx": list(self.meta.patch_shape_zyx),
            "providers": self.providers,
        }


def _sigmoid(x: np.ndarray) -> np.ndarray:
    out = np.negative(x, dtype=np.float32)
    np.exp(out, out=out)
    out += 1.0
    np.reciprocal(out, out=out)
    return out


SACRUM_FILE = "sacrum.onnx"
"""Optional segment-stage model of the sacrum check, beside the three stages' files."""
OUTLINE_FILE = "outline.onnx"
"""Optional segment-stage model of the candidates' outlines (module docstring), beside the three stages' files."""
SKULL_FILE = "skull.onnx"
"""Optional detect-stage model of the skull base (:mod:`algorithm.skull`), beside the three stages' files."""


@dataclass
class Models:
    """The three loaded stages, the optional models (sacrum check, outlines, skull base), and where they came from."""

    detect: StageModel
    locate: StageModel
    segment: StageModel
    source: ModelSource
    sacrum: StageModel | None = None
    outline: StageModel | None = None
    skull: StageModel | None = None

    @property
    def outliner(self) -> StageModel:
        """The model whose outlines place the candidates: ``outline.onnx`` when the folder has one, else segment."""
        return self.outline if self.outline is not None else self.segment

    @property
    def on_gpu(self) -> bool:
        return self.detect.on_gpu

    @property
    def providers(self) -> list[str]:
        return self.detect.providers

    def describe(self) -> dict[str, Any]:
        described = {"directory": str(self.source.directory), "rule": self.source.rule,
                     **{stage: getattr(self, stage).describe() for stage in STAGES}}
        for optional in ("sacrum", "outline", "skull"):
            model = getattr(self, optional)
            if model is not None:
                described[optional] = model.describe()
        return described


def _dims(shape: Sequence[Any]) -> list[int | None]:
    return [d if isinstance(d, int) and d > 0 else None for d in shape]


def _check_shapes(path: Path, meta: ModelMeta, input_shape: Sequence[Any], output_shape: Sequence[Any]) -> None:
    """The graph's declared shapes must agree with its metadata wherever they are fixed."""
    ins, outs = _dims(input_shape), _dims(output_shape)
    if len(ins) != 5:
        raise ModelError(f"{path}: input must be 5-D (batch, channel, z, y, x), got shape {list(input_shape)}")
    if ins[1] is not None and ins[1] != len(meta.input_channels):
        raise ModelError(f"{path}: input has {ins[1]} channels, metadata lists {list(meta.input_channels)}")
    for axis, size in enumerate(ins[2:]):
        if size is not None and size != meta.patch_shape_zyx[axis]:
            raise ModelError(f"{path}: input spatial shape {ins[2:]} differs from metadata patch_shape_zyx "
                             f"{list(meta.patch_shape_zyx)}")
    if len(outs) == 5 and outs[1] is not None and outs[1] != len(meta.channels):
        raise ModelError(f"{path}: output has {outs[1]} channels, metadata lists {len(meta.channels)}")
    unknown = set(meta.input_channels) - SUPPORTED_INPUT_CHANNELS
    if unknown:
        raise ModelError(f"{path}: input channels {sorted(unknown)} are not supported "
                         f"(known: {sorted(SUPPORTED_INPUT_CHANNELS)})")


def _session_options(threads: int | None) -> Any:
    ort = _ort()
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: warnings would clutter the container's stderr
    if threads:
        options.intra_op_num_threads = threads
    return options


def load_stage(stage: str, path: Path, providers: list[Any], *, threads: int | None = None) -> StageModel:
    """Open one stage's ONNX file, parse and check its metadata against the graph."""
    ort = _ort()
    if not path.is_file():
        raise ModelError(f"{path}: no such file")
    try:
        session = ort.InferenceSession(str(path), sess_options=_session_options(threads), providers=providers)
    except Exception as error:  # ORT raises its own exception types for bad files
        raise ModelError(f"{path}: cannot load ONNX model ({str(error).strip().splitlines()[0][:200]})") from None
    try:
        meta = ModelMeta.from_props(session.get_modelmeta().custom_metadata_map, source=str(path))
    except ModelMetaError as error:
        raise ModelError(str(error)) from None
    if meta.stage != stage:
        raise ModelError(f"{path}: metadata says stage {meta.stage!r}, the file is used as {stage!r}")
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1:
        raise ModelError(f"{path}: expected one input tensor, got {len(inputs)}")
    _check_shapes(path, meta, inputs[0].shape, outputs[0].shape)
    batch_dim = inputs[0].shape[0]
    return StageModel(
        stage=stage,
        path=path,
        meta=meta,
        session=session,
        input_name=inputs[0].name,
        output_name=outputs[0].name,
        on_gpu=session.get_providers()[0] in ("CUDAExecutionProvider", "TensorrtExecutionProvider"),
        max_batch=batch_dim if isinstance(batch_dim, int) and batch_dim > 0 else None,
        sha256=_sha256(path),
    )


def _load_stages(source: ModelSource, providers: list[Any], threads: int | None, *,
                 quiet: bool = False) -> tuple[dict[str, StageModel], list[str]]:
    """The stages and the optional models that load, and the optional files that are there but do not load (a
    warning each, unless ``quiet``: a CUDA attempt that the CPU retries)."""
    stages = {stage: load_stage(stage, source.directory / f"{stage}.onnx", providers, threads=threads)
              for stage in STAGES}
    failed = []
    for name, file, stage, without in (
            ("sacrum", SACRUM_FILE, "segment", "the sacrum check is off"),
            ("outline", OUTLINE_FILE, "segment", "the segment model outlines the candidates"),
            ("skull", SKULL_FILE, "detect", "the skull-base anchor is off")):
        if (source.directory / file).is_file():
            try:
                stages[name] = load_stage(stage, source.directory / file, providers, threads=threads)
            except ModelError as error:  # optional: a broken one costs what it is for, not the run
                failed.append(name)
                if not quiet:
                    log.warning("%s; %s", error, without)
    return stages, failed


def load_models(source: ModelSource, *, device: Device = "auto", threads: int | None = None) -> Models:
    """Load the three stages (and the optional sacrum check's and outlines' models) on the chosen device; log the
    provider ONNX Runtime really uses.

    ``auto`` falls back to the CPU when a CUDA session does not come up on the GPU;
    ``cuda`` raises :class:`ModelError` then.
    """
    ort = _ort()
    available = list(ort.get_available_providers())
    tensorrt = os.environ.get(TENSORRT_ENV, "") == "1"
    gpus = cuda_devices() if device != "cpu" and "CUDAExecutionProvider" in available else 0
    chain = provider_chain(device, available, gpus=gpus, tensorrt=tensorrt)
    if device == "auto" and len(chain) == 1 and "CUDAExecutionProvider" in available:
        log.info("ONNX Runtime offers CUDA but the driver reports no GPU: using the CPU")
    stages: dict[str, StageModel] | None = None
    if len(chain) > 1:
        _preload_cuda_libraries()
        try:
            stages, failed = _load_stages(source, chain, threads, quiet=True)
            off = [name for name, model in stages.items() if not model.on_gpu]
            problem = (f"{', '.join(off)} run on {stages[off[0]].providers}" if off else
                       # an optional model that loads on neither would be skipped on the CPU too; one that fails
                       # only here must not leave the run without it (the outline model places the candidates)
                       f"{', '.join(failed)} did not load" if failed else "")
        except ModelError as error:  # some ORT builds raise instead of falling back
            problem = str(error)
        if problem:
            if device == "cuda":
                raise ModelError(f"--device cuda: ONNX Runtime could not start the CUDA provider ({problem}); "
                                 "check the GPU, driver and CUDA libraries")
            log.warning("the CUDA provider did not start (%s): using the CPU", problem)
            stages = None
    if stages is None:
        stages, _ = _load_stages(source, ["CPUExecutionProvider"], threads)
    models = Models(source=source, **stages)
    log.info("models from %s (%s); execution providers %s (ONNX Runtime %s offers %s)", source.directory,
             source.rule, models.providers, ort.__version__, available)
    return models
