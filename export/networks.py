"""Torch networks for the three stages: one small configurable 3-D U-Net.

Every stage uses :class:`UNet3D` (instance norm, LeakyReLU, strided-conv downsampling,
transposed-conv upsampling, additive-free concatenating skips). The network returns
logits ``(N, C_out, z, y, x)`` for a ``(N, C_in, z, y, x)`` input; :class:`ProbabilityModel`
appends the probability head for export (a sigmoid, or for the locate stage a centre
sigmoid times label likelihood ratios, :func:`probabilities`), so exported outputs are
probabilities in [0, 1] as ``ModelMeta.output == "probability"`` promises.

Sizes are chosen so that inference fits a T4 and the 2-core CPU fallback stays well
within 4 GB: a few hundred thousand to about two million parameters per stage.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from spine.modelmeta import ModelMeta

__all__ = [
    "HEADS",
    "NetworkConfig",
    "InstanceNorm3d",
    "ProbabilityModel",
    "UNet3D",
    "build_network",
    "count_parameters",
    "default_network_config",
    "probabilities",
    "weights_from_onnx",
]


HEADS = ("sigmoid", "centre_label")


@dataclass(frozen=True)
class NetworkConfig:
    """Architecture of a :class:`UNet3D`.

    - ``base_channels``: feature maps at full resolution; level ``i`` has ``base * 2**i``
      (capped at ``max_channels``).
    - ``depth``: number of resolution levels (``depth - 1`` downsamplings by 2), so the
      patch shape must be divisible by ``2 ** (depth - 1)`` along every axis.
    - ``output_bias``: initial bias of the output logits (e.g. -4 for sparse heatmaps:
      sigmoid(-4) ~ 0.018, the focal-loss prior trick).
    - ``head``: how logits become the exported probabilities (:func:`probabilities`):
      ``"sigmoid"`` (one logit per output channel), or ``"centre_label"`` (one extra leading
      logit for "a vertebral-body centre is here" plus one label logit per channel).
    """

    base_channels: int = 8
    depth: int = 4
    max_channels: int = 128
    negative_slope: float = 0.01
    output_bias: float = 0.0
    head: str = "sigmoid"

    def __post_init__(self) -> None:
        if self.base_channels < 1 or self.depth < 1 or self.max_channels < self.base_channels:
            raise ValueError(f"invalid network config {self}")
        if self.head not in HEADS:
            raise ValueError(f"head: expected one of {HEADS}, got {self.head!r}")

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)

    def level_channels(self) -> list[int]:
        """Feature maps per level, full resolution first."""
        return [min(self.base_channels * 2**i, self.max_channels) for i in range(self.depth)]


def default_network_config(stage: str) -> NetworkConfig:
    """Default architecture per stage (see MODEL_CARD.md for the parameter counts)."""
    if stage == "detect":
        return NetworkConfig(base_channels=4, depth=5, output_bias=-2.0)
    if stage == "locate":
        return NetworkConfig(base_channels=8, depth=4, output_bias=-4.0, head="centre_label")
    if stage == "segment":
        return NetworkConfig(base_channels=8, depth=4, output_bias=-2.0)
    raise ValueError(f"unknown stage {stage!r}")


def _staged_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over (z, y, x) one axis at a time (keepdim): each ONNX ``ReduceMean`` then sums at
    most one axis's length of float32 values, instead of a whole feature map sequentially."""
    return x.mean(dim=4, keepdim=True).mean(dim=3, keepdim=True).mean(dim=2, keepdim=True)


class InstanceNorm3d(nn.InstanceNorm3d):
    """Affine instance norm whose ONNX graph is two-pass, axis-by-axis ``ReduceMean`` arithmetic.

    ONNX Runtime's CPU ``InstanceNormalization`` (and a plain ``ReduceMean`` over a whole map)
    accumulates ~100k float32 values sequentially: a 64x48x48 feature map came out ~1e-4 off
    float64 where torch is within 1e-6, and the trained detector amplified that to 7e-3 in its
    output, failing the export parity check. Training uses torch's kernel; during ONNX export
    the same statistics are written out as means along one axis at a time (``mean``, then
    ``(x - mean)^2``, ``mean``), which the parity check compares with torch. Parameters and
    state-dict keys are those of ``nn.InstanceNorm3d``.
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__(num_features, eps=eps, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.onnx.is_in_onnx_export():
            return super().forward(x)
        mean = _staged_mean(x)
        centred = x - mean
        variance = _staged_mean(centred * centred)
        scale = self.weight.view(1, -1, 1, 1, 1) / torch.sqrt(variance + self.eps)
        return centred * scale + self.bias.view(1, -1, 1, 1, 1)


class ConvBlock(nn.Sequential):
    """Two 3x3x3 convolutions, each followed by instance norm and LeakyReLU.

    The first convolution may stride by 2 (the downsampling step of the encoder).
    """

    def __init__(self, in_channels: int, out_channels: int, *, stride: int = 1, negative_slope: float = 0.01):
        super().__init__(
            nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            InstanceNorm3d(out_channels),
            nn.LeakyReLU(negative_slope, inplace=True),
            nn.Conv3d(out_channels, out_channels, 3, padding=1, bias=False),
            InstanceNorm3d(out_channels),
            nn.LeakyReLU(negative_slope, inplace=True),
        )


class UNet3D(nn.Module):
    """Plain 3-D U-Net: ``(N, in_channels, z, y, x)`` -> logits ``(N, out_channels, z, y, x)``.

    Spatial sizes must be divisible by ``2 ** (depth - 1)``; :meth:`check_patch_shape`
    says so with a clear message.
    """

    def __init__(self, in_channels: int, out_channels: int, config: NetworkConfig | None = None):
        super().__init__()
        self.config = config or NetworkConfig()
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)  # logits; "centre_label" heads emit one more
        widths = self.config.level_channels()
        slope = self.config.negative_slope
        self.encoder = nn.ModuleList()
        previous = self.in_channels
        for level, width in enumerate(widths):
            self.encoder.append(ConvBlock(previous, width, stride=1 if level == 0 else 2, negative_slope=slope))
            previous = width
        self.upsample = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for level in range(len(widths) - 2, -1, -1):
            self.upsample.append(nn.ConvTranspose3d(widths[level + 1], widths[level], 2, stride=2, bias=False))
            self.decoder.append(ConvBlock(2 * widths[level], widths[level], negative_slope=slope))
        self.head = nn.Conv3d(widths[0], self.out_channels, 1)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)):
                nn.init.kaiming_normal_(module.weight, a=self.config.negative_slope, nonlinearity="leaky_relu")
        # The head keeps PyTorch's default init: a near-zero head (std 1e-3) starves the body of
        # gradient and left the 8 mm detector flat for hundreds of iterations.
        self.head.reset_parameters()
        if self.head.bias is not None:
            if self.config.head == "centre_label":  # prior on the centre logit only; labels start uniform
                nn.init.zeros_(self.head.bias)
                nn.init.constant_(self.head.bias[:1], self.config.output_bias)
            else:
                nn.init.constant_(self.head.bias, self.config.output_bias)

    @property
    def divisor(self) -> int:
        """Every spatial size must be a multiple of this."""
        return 2 ** (self.config.depth - 1)

    def check_patch_shape(self, shape_zyx: Sequence[int]) -> None:
        """Raise ValueError unless every axis of ``shape_zyx`` is a multiple of :attr:`divisor`."""
        bad = [int(s) for s in shape_zyx if int(s) % self.divisor or int(s) <= 0]
        if bad:
            raise ValueError(f"patch shape {tuple(shape_zyx)}: every axis must be a positive multiple of "
                             f"{self.divisor} for a U-Net of depth {self.config.depth}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        x = skips.pop()
        for up, block in zip(self.upsample, self.decoder, strict=True):
            x = block(torch.cat([up(x), skips.pop()], dim=1))
        return self.head(x)


def probabilities(logits: torch.Tensor, head: str) -> torch.Tensor:
    """Network logits -> output probabilities in [0, 1], ``(N, C, z, y, x)``.

    - ``"sigmoid"``: ``sigmoid(logits)``, channel by channel.
    - ``"centre_label"``: ``logits[:, 0]`` says whether a vertebral-body centre is at a voxel,
      ``logits[:, 1:]`` which label it has; output channel ``c`` is
      ``sigmoid(centre) * exp(label_c - max_c' label_c')``: the channel maximum is the centre
      probability and the ratios between channels are the label likelihood ratios (the
      softmax divided by its maximum). Factorised so that the centre is learnt as one
      class-agnostic heatmap (fast, like the detector) and the label as a dense classification.
    """
    if head == "sigmoid":
        return torch.sigmoid(logits)
    if head == "centre_label":
        labels = logits[:, 1:]
        return torch.sigmoid(logits[:, :1]) * torch.exp(labels - labels.amax(dim=1, keepdim=True))
    raise ValueError(f"unknown head {head!r}")


class ProbabilityModel(nn.Module):
    """A logit network followed by its probability head (:func:`probabilities`): what is exported."""

    def __init__(self, network: UNet3D):
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return probabilities(self.network(x), self.network.config.head)


def build_network(meta: ModelMeta, config: NetworkConfig | None = None) -> UNet3D:
    """The network for one stage, its channel counts taken from ``meta``.

    Raises ValueError when ``meta.patch_shape_zyx`` does not suit the architecture.
    """
    config = config or default_network_config(meta.stage)
    extra = 1 if config.head == "centre_label" else 0
    network = UNet3D(len(meta.input_channels), len(meta.channels) + extra, config)
    network.check_patch_shape(meta.patch_shape_zyx)
    return network


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def weights_from_onnx(network: nn.Module, path: str | os.PathLike[str]) -> int:
    """Load an exported model's weights (``export onnx`` of the same architecture) into ``network``; returns
    how many tensors were loaded.

    Convolutions and the head keep their state-dict names in the ONNX file (``network.<key>``). The
    instance norms' weight and bias appear, in graph order, as the unnamed constants the export divides
    by and adds (:class:`InstanceNorm3d`), so they are assigned to the norms in module order. Raises
    ValueError when anything is missing or of another shape: fine-tuning must start from exactly that
    model (the export's parity check then confirms the mapping).
    """
    import re

    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    tensors = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    state = network.state_dict()
    loaded: dict[str, torch.Tensor] = {}
    for key in state:
        name = f"network.{key}"
        if name in tensors:
            loaded[key] = torch.from_numpy(tensors[name].copy())

    def numbered(prefix: str) -> list[np.ndarray]:
        found = [(int(m.group(1)), array) for name, array in tensors.items()
                 if (m := re.fullmatch(rf"onnx::{prefix}_(\d+)", name))]
        return [array for _, array in sorted(found, key=lambda pair: pair[0])]

    norms = [name for name, module in network.named_modules() if isinstance(module, nn.InstanceNorm3d)]
    scales, shifts = numbered("Div"), numbered("Add")
    if len(scales) != len(norms) or len(shifts) != len(norms):
        raise ValueError(f"{path}: {len(scales)} norm scales and {len(shifts)} shifts for {len(norms)} norms")
    for name, scale, shift in zip(norms, scales, shifts, strict=True):
        loaded[f"{name}.weight"] = torch.from_numpy(scale.reshape(-1).copy())
        loaded[f"{name}.bias"] = torch.from_numpy(shift.reshape(-1).copy())
    missing = [k for k in state if k not in loaded]
    wrong = [k for k, v in loaded.items() if tuple(v.shape) != tuple(state[k].shape)]
    if missing or wrong:
        raise ValueError(f"{path}: not this architecture (missing {missing[:3]}, other shapes {wrong[:3]})")
    network.load_state_dict(loaded)
    return len(loaded)
