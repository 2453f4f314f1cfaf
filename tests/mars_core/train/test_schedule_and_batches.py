"""Learning-rate schedules and the order in which a run sees its examples."""

from __future__ import annotations

import pytest

from mars_core.train.batches import SampleStream, epoch_order, subset_indices
from mars_core.train.evaluation import normalize_answer
from mars_core.train.schedule import WarmupSchedule


def test_warmup_rises_linearly_to_one():
    schedule = WarmupSchedule(warmup_steps=4, total_steps=20, kind="constant")

    assert [schedule(step) for step in range(4)] == [0.25, 0.5, 0.75, 1.0]


def test_constant_schedule_stays_after_warmup():
    schedule = WarmupSchedule(warmup_steps=2, total_steps=10, kind="constant")

    assert {schedule(step) for step in range(2, 50)} == {1.0}


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_decaying_schedule_reaches_zero_at_end(kind):
    schedule = WarmupSchedule(warmup_steps=2, total_steps=12, kind=kind)
    values = [schedule(step) for step in range(2, 13)]

    assert values[0] == 1.0
    assert values[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(later <= earlier for earlier, later in zip(values, values[1:]))
    assert schedule(7) == pytest.approx(0.5)


def test_unknown_schedule_rejected():
    with pytest.raises(ValueError, match="unknown schedule"):
        WarmupSchedule(0, 10, kind="step")(3)


def test_smaller_subset_is_prefix_of_larger():
    small = subset_indices(1000, 250, seed=3)
    large = subset_indices(1000, 500, seed=3)

    assert large[:250] == small
    assert len(set(large)) == 500


def test_subset_depends_on_seed():
    assert subset_indices(1000, 100, seed=0) != subset_indices(1000, 100, seed=1)


def test_epochs_use_different_orders():
    first, second = epoch_order(50, seed=0, epoch=0), epoch_order(50, seed=0, epoch=1)

    assert sorted(first) == sorted(second) == list(range(50))
    assert first != second


def test_stream_batches_straddle_epochs():
    stream = SampleStream(n_train=10, seed=0)

    batch = stream.positions(8, 4)

    assert batch[:2] == epoch_order(10, 0, 0)[8:]
    assert batch[2:] == epoch_order(10, 0, 1)[:2]


def test_stream_position_gives_same_batch_again():
    one, other = SampleStream(10, seed=5), SampleStream(10, seed=5)

    one.positions(0, 30)
    assert one.positions(33, 6) == other.positions(33, 6)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("Seven", "seven"), ("  yes. ", "yes"), ("Odd!", "odd"), ("one,  two", "one two"), ("", "")],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected
