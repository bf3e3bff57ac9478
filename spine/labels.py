"""VerSe vertebra labels: ids, names, regions and the anatomical order with its variants.

This module is the single source of truth for the label scheme (DESIGN.md,
"Vertebra labels"). It imports nothing heavier than the standard library so that
every part of the project, and its tests, can use it without numpy, torch or
ONNX Runtime.

VerSe ids: 1-7 C1-C7, 8-19 T1-T12, 20-24 L1-L5, 25 L6, 26 sacrum, 27 coccyx, 28 T13.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "CERVICAL",
    "EVALUATED",
    "LOCATE_CHANNELS",
    "LUMBAR",
    "MAX_LABEL",
    "NAMES",
    "Region",
    "THORACIC",
    "allowed_next",
    "anatomical_rank",
    "is_vertebra",
    "label_of",
    "name_of",
    "region_of",
]

MAX_LABEL = 28
"""Largest value a label map may hold (the GC socket declares 0..28)."""

NAMES: dict[int, str] = {
    **{i: f"C{i}" for i in range(1, 8)},
    **{i: f"T{i - 7}" for i in range(8, 20)},
    **{i: f"L{i - 19}" for i in range(20, 26)},
    26: "S1",
    27: "Cx",
    28: "T13",
}
"""VerSe id -> name. The sacrum is named S1 as in VerSe's own tables, the coccyx Cx."""

_IDS: dict[str, int] = {name: label for label, name in NAMES.items()}
# Names other tools use for the same ids, accepted when reading.
_IDS.update({"sacrum": 26, "S": 26, "coccyx": 27, "COCC": 27})

EVALUATED: tuple[int, ...] = (*range(1, 26), 28)
"""Labels predicted and scored: C1..L6 and T13 (not sacrum or coccyx)."""

LOCATE_CHANNELS: tuple[int, ...] = EVALUATED
"""Channel order of the locate stage's heatmaps and of the decoder's score columns."""

CERVICAL: tuple[int, ...] = tuple(range(1, 8))
THORACIC: tuple[int, ...] = (*range(8, 20), 28)
LUMBAR: tuple[int, ...] = tuple(range(20, 26))


class Region(StrEnum):
    """Spine region of a vertebra; str-valued so it serialises as its name."""

    CERVICAL = "cervical"
    THORACIC = "thoracic"
    LUMBAR = "lumbar"
    SACRAL = "sacral"


def name_of(label: int) -> str:
    """Name of a VerSe id (``20 -> "L1"``). Raises ValueError for an unknown id."""
    try:
        return NAMES[int(label)]
    except KeyError:
        raise ValueError(f"not a VerSe vertebra label: {label!r}") from None


def label_of(name: str) -> int:
    """VerSe id of a name (``"L1" -> 20``), case-insensitive. Raises ValueError."""
    key = name.strip()
    for candidate in (key, key.upper(), key.capitalize()):
        if candidate in _IDS:
            return _IDS[candidate]
    raise ValueError(f"not a vertebra name: {name!r}")


def is_vertebra(label: int) -> bool:
    """True for the evaluated vertebra ids (1-25, 28)."""
    return int(label) in EVALUATED


def region_of(label: int) -> Region:
    """Region of a VerSe id; T13 is thoracic, L6 lumbar, sacrum and coccyx sacral."""
    label = int(label)
    if label in CERVICAL:
        return Region.CERVICAL
    if label in THORACIC:
        return Region.THORACIC
    if label in LUMBAR:
        return Region.LUMBAR
    if label in (26, 27):
        return Region.SACRAL
    raise ValueError(f"not a VerSe vertebra label: {label!r}")


# Cranio-caudal rank: T13 sits between T12 (19) and L1 (20).
_RANK: dict[int, float] = {label: float(label) for label in range(1, 28)}
_RANK[28] = 19.5


def anatomical_rank(label: int) -> float:
    """Position along the spine from the skull down; sorting by it gives C1..T12, T13, L1..L6, S, Cx."""
    try:
        return _RANK[int(label)]
    except KeyError:
        raise ValueError(f"not a VerSe vertebra label: {label!r}") from None


def allowed_next(label: int) -> tuple[int, ...]:
    """Labels that may directly follow ``label`` going caudally, variants included.

    Normal order C1..C7, T1..T11, [T12], [T13], L1..L4, [L5], [L6] (DESIGN.md):
    T11 -> T12 or L1 (11 thoracic); T12 -> T13 or L1; T13 -> L1; L4 -> L5 (or the
    end, handled by the caller); L5 -> L6 or the sacrum; L6 -> sacrum.
    """
    label = int(label)
    if label in range(1, 18):  # C1..T10: plain successor
        return (label + 1,)
    table: dict[int, tuple[int, ...]] = {
        18: (19, 20),  # T11 -> T12, or L1 with 11 thoracic vertebrae
        19: (28, 20),  # T12 -> T13 (13 thoracic) or L1
        28: (20,),  # T13 -> L1
        20: (21,),
        21: (22,),
        22: (23,),
        23: (24, 26),  # L4 -> L5, or the sacrum with 4 lumbar vertebrae
        24: (25, 26),  # L5 -> L6 (6 lumbar) or the sacrum
        25: (26,),
        26: (27,),
        27: (),
    }
    if label not in table:
        raise ValueError(f"not a VerSe vertebra label: {label!r}")
    return table[label]
