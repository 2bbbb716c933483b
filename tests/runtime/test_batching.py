"""Micro-batch planning and padding, without a model."""

from __future__ import annotations

import numpy as np
import pytest

from embedrt.backends.base import ShapeLimits
from embedrt.batching import CPU_BATCHING, bucket_for, collate, plan
from embedrt.config import BatchingConfig
from embedrt.errors import InvalidInputError


def test_bucket_for() -> None:
    buckets = (16, 32, 64)
    assert [bucket_for(n, buckets) for n in (1, 16, 17, 64)] == [16, 16, 32, 64]
    assert bucket_for(100, buckets) == 100  # past the last bucket: the length itself
    assert bucket_for(20, buckets, cap=24) == 24  # never past the backend's (or model's) maximum
    with pytest.raises(InvalidInputError, match="maximum of 24"):
        bucket_for(30, buckets, cap=24)


def test_plan_respects_budget_row_cap_and_covers_every_input_once() -> None:
    rng = np.random.default_rng(0)
    lengths = [int(n) for n in rng.integers(1, 300, size=200)]
    config = BatchingConfig(max_batch_tokens=1024, max_batch_size=8, sequence_buckets=(16, 32, 64, 128, 256, 512))
    batches = plan(lengths, config)
    seen = sorted(i for b in batches for i in b.indices)
    assert seen == list(range(200))
    for b in batches:
        assert len(b.indices) <= 8 and len(b.indices) * b.sequence <= 1024
        assert b.sequence in config.sequence_buckets and max(lengths[i] for i in b.indices) <= b.sequence
    firsts = [lengths[b.indices[0]] for b in batches]
    assert firsts == sorted(firsts, reverse=True)  # longest first


def test_plan_obeys_backend_limits() -> None:
    limits = ShapeLimits(max_batch=2, max_sequence=100, sequence_buckets=(50, 100))
    batches = plan([10, 60, 20, 90, 5], BatchingConfig(), limits)
    assert all(len(b.indices) <= 2 and b.sequence in (50, 100) for b in batches)
    one_long = plan([5000], BatchingConfig(max_batch_tokens=16, sequence_buckets=(16, 32)))  # runs alone
    assert [(b.indices, b.sequence) for b in one_long] == [((0,), 5000)]


def test_cpu_defaults_pad_little() -> None:
    rng = np.random.default_rng(1)
    lengths = [int(np.exp(x)) for x in rng.uniform(np.log(16), np.log(512), size=256)]
    padded = sum(len(b.indices) * b.sequence for b in plan(lengths, CPU_BATCHING))
    assert padded / sum(lengths) < 1.25


def test_collate_pads_on_the_manifest_side() -> None:
    rows = [np.array([5, 6, 7]), np.array([8])]
    right = collate(rows, 4, pad_id=0, padding_side="right")
    assert right.input_ids.tolist() == [[5, 6, 7, 0], [8, 0, 0, 0]]
    assert right.attention_mask.tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]
    assert right.lengths.tolist() == [3, 1] and right.input_ids.dtype == np.int64
    left = collate(rows, 4, pad_id=9, padding_side="left")
    assert left.input_ids.tolist() == [[9, 5, 6, 7], [9, 9, 9, 8]]
    assert left.attention_mask.tolist() == [[0, 1, 1, 1], [0, 0, 0, 1]]
