"""Growing batches: only the first image borrows initial bits; sizes survive checkpoints and files."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import craystack as cs
from bits_back_diffusion.batch_schedule import GROWTH_MARGIN, BatchSchedule, encode_batch, expand_runs, run_lengths
from bits_back_diffusion.bitswap import BITSWAP_PRECISIONS, BitSwapCodec
from bits_back_diffusion.coding import initial_message
from bits_back_diffusion.latent_model import DiffusionLatentModel
from test_bitswap import ConvNet, process


def test_fixed_schedule_is_full_batches_then_the_rest():
    schedule = BatchSchedule(4)
    message = cs.base_message((1, 2))
    assert [schedule.next_size(n, message) for n in (10, 4, 3, 0)] == [4, 4, 3, 0]


def test_growing_schedule_starts_with_one_image_and_fits_the_tail():
    schedule = BatchSchedule(8, grow=True)
    empty = cs.base_message((4,))
    assert schedule.next_size(100, empty) == 1
    schedule.record(1, 10)
    assert schedule.next_size(100, empty) == 1  # nothing in the tail: one image at a time
    deep = cs.random_message(4 + 100, (4,), seed=0)
    tail = cs.tail_length(deep)
    assert schedule.next_size(100, deep) == min(8, int(tail // (10 * GROWTH_MARGIN)))
    assert schedule.next_size(2, deep) == 2
    schedule.record(4, 80)  # a deficit of 20 words per image now
    assert schedule.next_size(100, deep) == max(1, int(tail // (20 * GROWTH_MARGIN)))
    again = BatchSchedule.from_dict(schedule.to_dict())
    assert again == schedule


@given(st.lists(st.integers(1, 5), max_size=30))
@settings(max_examples=50, deadline=None)
def test_run_lengths_roundtrip(sizes):
    runs = run_lengths(sizes)
    assert expand_runs(runs) == sizes
    assert all(a[0] != b[0] for a, b in zip(runs, runs[1:]))


def test_growing_batches_borrow_only_for_the_first_image():
    """Eight noise images (about 8 bits/dim each) on the lanes of one image: the first batch
    borrows generator words, the others find enough words in the message, and the batch grows."""
    diffusion = process(1000, "6")
    codec = BitSwapCodec(DiffusionLatentModel(ConvNet(), diffusion, torch.device("cpu")), BITSWAP_PRECISIONS)
    x = np.random.default_rng(5).integers(0, 256, (24, 3, 4, 4))
    start = initial_message(codec, (1, 3, 4, 4), seed=0)
    schedule = BatchSchedule(4, grow=True)
    message, done, borrowed = start, 0, []
    while done < len(x):
        size = schedule.next_size(len(x) - done, message)
        message, _ = encode_batch(codec, message, x[done:done + size], schedule)
        borrowed.append(cs.empty_pops(message))
        done += size
    assert schedule.sizes[0] == 1 and max(schedule.sizes) == 4 and sum(schedule.sizes) == len(x)
    assert borrowed[0] > 0 and borrowed[-1] == borrowed[0], (schedule.sizes, borrowed)
    ends = np.cumsum([0] + schedule.sizes)
    for k in reversed(range(len(schedule.sizes))):
        message, back = codec.decode(message, schedule.sizes[k])
        np.testing.assert_array_equal(back, x[ends[k]:ends[k + 1]])
    assert cs.message_equal(message, start)


def test_batch_size_must_be_positive():
    with pytest.raises(ValueError, match="batch size must be >= 1"):
        BatchSchedule(0)


@given(sizes=st.lists(st.integers(1, 5), min_size=1, max_size=4), head=st.integers(1, 3),
       seed=st.integers(0, 2**16))
@settings(max_examples=15, deadline=None)
def test_any_batch_sizes_on_any_head_roundtrip(sizes, head, seed):
    """Batches of any sizes (larger or smaller than the head, uneven last groups) decode exactly,
    last first, back to the bare initial message."""
    codec = BitSwapCodec(DiffusionLatentModel(ConvNet(), process(1000, "3"), torch.device("cpu")),
                         BITSWAP_PRECISIONS)
    x = np.random.default_rng(seed).integers(0, 256, (sum(sizes), 3, 2, 3))
    start = initial_message(codec, (head, 3, 2, 3), seed=seed)
    ends = np.cumsum([0] + sizes)
    message = start
    for a, b in zip(ends, ends[1:]):
        message = codec.encode(message, x[a:b])
    for k in reversed(range(len(sizes))):
        message, back = codec.decode(message, sizes[k])
        np.testing.assert_array_equal(back, x[ends[k]:ends[k + 1]])
    assert cs.message_equal(message, start)


def test_plan_refuses_a_head_outside_the_batch_naming_the_settings():
    from bits_back_diffusion.data.base import ArrayImageSet
    from bits_back_diffusion.encoder import EncodePlan

    images = ArrayImageSet(np.zeros((5, 1, 2, 2), np.uint8), name="tiny", num_levels=256)
    plan = EncodePlan.build(images, 4, -1, 0, 1, {}, head_images=1, grow=True)
    assert plan.head_shape == (1, 1, 2, 2) and plan.samples == 5 and plan.batch_sizes == []
    assert EncodePlan.build(images, 4, -1, 0, 1, {}).batch_sizes == [4, 1]
    for head in (0, 5):
        with pytest.raises(ValueError, match=rf"codec.lane_images={head} must lie in \[1, data.val.batch_size=4\]"):
            EncodePlan.build(images, 4, -1, 0, 1, {}, head_images=head)


@given(remaining=st.integers(0, 400), max_batch=st.integers(1, 16), grow=st.booleans(),
       words_per_image=st.one_of(st.none(), st.floats(0.5, 100.0)), tail=st.integers(0, 300),
       gained=st.integers(-2, 30))
@settings(max_examples=60, deadline=None)
def test_predicted_sizes_are_what_next_size_would_choose(remaining, max_batch, grow, words_per_image, tail, gained):
    """The progress bar's forecast runs the schedule's own rule on messages whose tail grows by
    `gained` words per coded image: checked against next_size on real messages of those tails
    (whole words, as in a real tail)."""
    schedule = BatchSchedule(max_batch, grow, words_per_image)
    predicted = schedule.predicted_sizes(remaining, tail, gained)
    assert sum(predicted) == remaining and all(size >= 1 for size in predicted)
    words, left = float(tail), remaining
    bare = len(cs.flatten(cs.base_message((4,))))  # the words of a message with an empty tail
    for size in predicted[:40]:
        message = cs.random_message(bare + int(words), (4,), seed=0)
        assert cs.tail_length(message) == int(words)
        assert schedule.next_size(left, message) == size
        left -= size
        words += max(gained, 0.0) * size
    assert schedule.sizes == []  # forecasting records nothing


def test_predicted_sizes_of_fixed_and_growing_schedules():
    assert BatchSchedule(4).predicted_sizes(10, 0, 0.0) == [4, 4, 2]
    # a deficit of 10 words per image, 5 words gained per coded image
    growing = BatchSchedule(4, grow=True, words_per_image=10.0)
    sizes = growing.predicted_sizes(30, 0, 5.0)
    assert sizes[:3] == [1, 1, 1] and sizes[-1] <= 4 and max(sizes) == 4 and sum(sizes) == 30
    assert sizes == sorted(sizes[:-1]) + sizes[-1:]  # batches only grow (the last takes the rest)
