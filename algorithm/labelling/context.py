"""Learned chain context: per-candidate level evidence from a sequence model over the whole candidate chain.

The decoder's region evidence (:mod:`algorithm.labelling`, item 2) reads each candidate's C/T/L
probabilities alone. A detector's calls are better read in context: a run of thoracic calls ending
where the spacing jumps, the rank from either end of the chain, a candidate sitting off its
neighbours' midpoint (a false detection). :class:`ContextModel` runs a small bidirectional GRU
(trained by ``python -m export label-context``, exported to ONNX, stage ``label``) over the candidates
ordered along the spine curve and returns, per candidate and chain rank, a log likelihood ratio
against a false detection, which replaces the region ratio as the decoder's emission term: the exact
decoder keeps its variants, fixes, spine facts, cut vertebrae and confidences.

**Features** (:func:`context_features`, the one place both training and inference build them), per
candidate in spine order (k = 0 at the head, n candidates, ``d_prev`` / ``d_next`` the 3-D distance to
the previous / next candidate, ``a_prev`` / ``a_next`` the arc-length difference along the fitted spine
curve, ``m`` the median of the scan's 3-D neighbour distances):

* ``p_C, p_T, p_L`` and ``log max(p, 1e-3)`` of each (6);
* ``d_prev / 30``, ``d_next / 30``, ``a_prev / 30``, ``a_next / 30`` (raw spacing in units of 30 mm, 0 at
  the chain's ends) and each divided by ``m`` (8), ``log(d / m)`` of the two 3-D ones (2);
* whether a previous / next candidate exists (2);
* rank from the head and from the foot, ``k / 25`` and ``(n - 1 - k) / 25``, and ``n / 25`` (3);
* the distance of the candidate from its neighbours' midpoint, divided by ``m`` (0 at the ends) (1);
* ``m / 30`` (1).

All are invariant to a translation of the positions and to the order the candidates come in.

**Evidence.** The network outputs ``log P(class | chain)`` over the 26 chain ranks and "false detection";
by Bayes the likelihood ratio of rank l against a false detection is
``log P(l | x) - log P(l) - log P(false | x) + log P(false)``, with the class frequencies of the training
candidates (model metadata ``class_log_prior``), as :mod:`algorithm.labelling.region_model` does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from algorithm.labelling.curve import spine_curve
from algorithm.labelling_prior import CHAIN_LABELS
from spine.labels import name_of
from spine.modelmeta import PREFIX, SCHEMA_VERSION, ModelMetaError, json_props, json_values

__all__ = ["CONTEXT_CLASSES", "CONTEXT_FEATURES", "ContextMeta", "ContextModel", "context_features"]

log = logging.getLogger(__name__)

_UNIT_MM = 30.0  # about one thoracolumbar step: keeps spacing features near 1
_RANK_UNIT = 25.0  # about a whole spine's candidates
_LOG_FLOOR = 1e-3
CONTEXT_FEATURES = (
    "p_C", "p_T", "p_L", "log_p_C", "log_p_T", "log_p_L",
    "d_prev", "d_next", "a_prev", "a_next", "d_prev_rel", "d_next_rel", "a_prev_rel", "a_next_rel",
    "log_d_prev_rel", "log_d_next_rel", "has_prev", "has_next", "rank_head", "rank_foot", "length",
    "midpoint_dev_rel", "median_spacing")
"""Feature names, in column order (module docstring)."""
CONTEXT_CLASSES = (*[name_of(label) for label in CHAIN_LABELS], "false")
"""Output classes: the chain ranks (``CHAIN_LABELS`` order) then a false detection."""


def context_features(positions_mm: np.ndarray, regions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The candidates' order along the spine (N,) and their features (N, F) in that order (module docstring).

    ``positions_mm`` (N, 3) world mm, ``regions`` (N, 3) C/T/L probabilities in [0, 1].
    """
    positions = np.asarray(positions_mm, dtype=np.float64).reshape(-1, 3)
    regions = np.clip(np.asarray(regions, dtype=np.float64).reshape(-1, 3), 0.0, 1.0)
    n = len(positions)
    features = np.zeros((n, len(CONTEXT_FEATURES)), dtype=np.float32)
    if n == 0:
        return np.zeros(0, dtype=np.intp), features
    t, _ = spine_curve(positions)
    order = np.argsort(t, kind="stable")
    x, p, t = positions[order], regions[order], t[order]
    gap = np.linalg.norm(np.diff(x, axis=0), axis=1)  # (n - 1,)
    arc = np.abs(np.diff(t))
    median = float(np.median(gap)) if n > 1 else _UNIT_MM
    median = max(median, 1.0)
    d_prev, d_next = np.r_[0.0, gap], np.r_[gap, 0.0]
    a_prev, a_next = np.r_[0.0, arc], np.r_[arc, 0.0]
    has_prev, has_next = np.r_[0.0, np.ones(n - 1)], np.r_[np.ones(n - 1), 0.0]
    midpoint = np.zeros(n)
    if n > 2:
        midpoint[1:-1] = np.linalg.norm(x[1:-1] - 0.5 * (x[:-2] + x[2:]), axis=1) / median
    log_rel = lambda d, has: np.where(has > 0, np.log(np.maximum(d, 1e-3) / median), 0.0)  # noqa: E731
    k = np.arange(n)
    columns = [
        *p.T, *np.log(np.maximum(p, _LOG_FLOOR)).T,
        d_prev / _UNIT_MM, d_next / _UNIT_MM, a_prev / _UNIT_MM, a_next / _UNIT_MM,
        d_prev / median, d_next / median, a_prev / median, a_next / median,
        log_rel(d_prev, has_prev), log_rel(d_next, has_next), has_prev, has_next,
        k / _RANK_UNIT, (n - 1 - k) / _RANK_UNIT, np.full(n, n / _RANK_UNIT), midpoint,
        np.full(n, median / _UNIT_MM)]
    features[:] = np.stack(columns, axis=1)
    return order.astype(np.intp), features


@dataclass(frozen=True)
class ContextMeta:
    """Self-description of a chain-context model (ONNX ``metadata_props``, ``verse_gc.`` keys, stage ``label``).

    ``features`` and ``classes`` name the input columns and output classes (they must match
    :data:`CONTEXT_FEATURES` and :data:`CONTEXT_CLASSES`); ``class_log_prior`` the training candidates'
    log class frequencies; ``output`` "log_probability" (log-softmax over classes). ``evidence_weight`` and
    ``fixed_evidence_weight``: the decoder's weight of the model's ratios (its ``region_weight`` and
    ``fixed_region_weight``), ``calibration`` its confidence map ``(a, b)``, all chosen by cross-validation.
    """

    features: tuple[str, ...] = CONTEXT_FEATURES
    classes: tuple[str, ...] = CONTEXT_CLASSES
    class_log_prior: tuple[float, ...] = ()
    evidence_weight: float = 1.0
    fixed_evidence_weight: float = 1.0
    calibration: tuple[float, float] = (1.0, 0.0)
    stage: str = "label"
    output: str = "log_probability"
    opset: int = 17
    trained_on: str = ""
    commit: str = ""
    version: str = ""
    notes: str = ""

    def __post_init__(self) -> None:
        if self.stage != "label":
            raise ModelMetaError(f"stage: expected 'label', got {self.stage!r}")
        if tuple(self.features) != CONTEXT_FEATURES:
            raise ModelMetaError("features: the model was trained on other features than this code builds")
        if tuple(self.classes) != CONTEXT_CLASSES:
            raise ModelMetaError("classes: expected the 26 chain ranks then 'false'")
        if len(self.class_log_prior) != len(CONTEXT_CLASSES) or not all(np.isfinite(self.class_log_prior)):
            raise ModelMetaError(f"class_log_prior: expected {len(CONTEXT_CLASSES)} finite numbers")
        if min(self.evidence_weight, self.fixed_evidence_weight) <= 0 or len(self.calibration) != 2 \
                or self.calibration[0] <= 0:
            raise ModelMetaError("evidence weights and the calibration slope must be > 0")
        if self.output != "log_probability":
            raise ModelMetaError(f"output: expected 'log_probability', got {self.output!r}")

    def to_props(self) -> dict[str, str]:
        """Flat ``metadata_props`` (string -> string)."""
        return json_props(self)

    @classmethod
    def from_props(cls, props: dict[str, str], *, source: str = "model") -> ContextMeta:
        """Parse and validate; :class:`ModelMetaError` naming ``source`` and the key."""
        if props.get(f"{PREFIX}schema") != str(SCHEMA_VERSION) or props.get(f"{PREFIX}stage") != '"label"':
            raise ModelMetaError(f"{source}: not a verse-gc chain-context model (stage 'label', schema "
                                 f"{SCHEMA_VERSION} expected in the ONNX metadata)")
        values = json_values(cls, props, source=source)
        try:
            for key in ("features", "classes"):
                values[key] = tuple(values.get(key, ()))
            values["class_log_prior"] = tuple(float(v) for v in values.get("class_log_prior", ()))
            values["calibration"] = tuple(float(v) for v in values.get("calibration", (1.0, 0.0)))
            return cls(**values)
        except ModelMetaError as error:
            raise ModelMetaError(f"{source}: {error}") from None
        except (TypeError, ValueError) as error:
            raise ModelMetaError(f"{source}: malformed metadata ({error})") from None


class ContextModel:
    """A chain-context ONNX model (stage ``label``) run by ONNX Runtime on one thread; see the module docstring."""

    def __init__(self, path: str | Path) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise ValueError(f"{self.path}: no such chain-context model")
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own exception types
            raise ValueError(f"{self.path}: not a readable ONNX model ({error})") from None
        self.meta = ContextMeta.from_props(dict(self._session.get_modelmeta().custom_metadata_map),
                                           source=str(self.path))
        self._input = self._session.get_inputs()[0].name
        prior = np.asarray(self.meta.class_log_prior)
        self._prior_ratio = prior[-1] - prior[:-1]  # log P(false) - log P(l)

    def log_probability(self, positions_mm: np.ndarray, regions: np.ndarray) -> np.ndarray:
        """(N, 27) ``log P(class | chain)`` per candidate, input order (classes :data:`CONTEXT_CLASSES`)."""
        order, features = context_features(positions_mm, regions)
        out = np.zeros((len(order), len(CONTEXT_CLASSES)))
        if len(order):
            out[order] = self._session.run(None, {self._input: features[None]})[0][0]
        return out

    def log_ratio(self, positions_mm: np.ndarray, regions: np.ndarray) -> np.ndarray:
        """(N, 26) log likelihood ratio of each chain rank against a false detection, input order."""
        log_p = self.log_probability(positions_mm, regions)
        return log_p[:, :-1] - log_p[:, -1:] + self._prior_ratio[None, :]
