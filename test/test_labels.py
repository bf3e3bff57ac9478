"""The VerSe label scheme: names round-trip, regions, the anatomical order with its variants."""

from __future__ import annotations

import pytest

from spine import labels


def test_every_id_round_trips_through_its_name() -> None:
    for label in range(1, labels.MAX_LABEL + 1):
        assert labels.label_of(labels.name_of(label)) == label


@pytest.mark.parametrize(("name", "label"), [("C1", 1), ("C7", 7), ("T1", 8), ("T12", 19), ("L1", 20),
                                             ("L5", 24), ("L6", 25), ("S1", 26), ("T13", 28), ("l3", 22)])
def test_names_match_verse_ids(name: str, label: int) -> None:
    assert labels.label_of(name) == label


def test_unknown_names_and_ids_raise() -> None:
    for bad in ("X1", "", "T14"):
        with pytest.raises(ValueError, match="not a vertebra name"):
            labels.label_of(bad)
    for bad_id in (0, 29, -1):
        with pytest.raises(ValueError):
            labels.name_of(bad_id)


def test_evaluated_labels_are_the_26_locate_channels() -> None:
    assert (*range(1, 26), 28) == labels.EVALUATED
    assert len(labels.LOCATE_CHANNELS) == 26
    assert not labels.is_vertebra(26) and labels.is_vertebra(28)


def test_regions() -> None:
    assert labels.region_of(7) is labels.Region.CERVICAL
    assert labels.region_of(28) is labels.Region.THORACIC
    assert labels.region_of(25) is labels.Region.LUMBAR
    assert labels.region_of(26) is labels.Region.SACRAL
    assert set(labels.CERVICAL) | set(labels.THORACIC) | set(labels.LUMBAR) == set(labels.EVALUATED)


def test_anatomical_order_puts_t13_between_t12_and_l1() -> None:
    ordered = sorted(labels.EVALUATED, key=labels.anatomical_rank)
    assert ordered.index(19) + 1 == ordered.index(28) == ordered.index(20) - 1


def test_variant_transitions() -> None:
    assert labels.allowed_next(5) == (6,)
    assert set(labels.allowed_next(18)) == {19, 20}  # 11 thoracic vertebrae
    assert set(labels.allowed_next(19)) == {28, 20}  # T13 variant
    assert labels.allowed_next(28) == (20,)
    assert 25 in labels.allowed_next(24)  # L6 variant
    assert 26 in labels.allowed_next(23)  # 4 lumbar vertebrae


def test_every_successor_is_further_down_the_spine() -> None:
    for label in range(1, 28):
        for nxt in labels.allowed_next(label):
            assert labels.anatomical_rank(nxt) > labels.anatomical_rank(label)
