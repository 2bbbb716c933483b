"""The pipelined ``run_many`` (``embedrt.backends.pipeline``) through its public interface, on CPU.

Slots are ``FakeSlot`` (no CUDA) handed out by the real ``trt_slots.Pool``: what is checked is the
scheduling (overlap, order, a caller never waiting on itself), the splitting by profiles, and that
every slot and profile comes back after an error or an early stop.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest
from trt_fakes import FakeSlot

from embedrt.backends.base import Batch
from embedrt.backends.pipeline import pipelined, split
from embedrt.backends.trt_slots import Pool
from embedrt.engines import ProfileShape
from embedrt.errors import BackendError, InvalidInputError, OverloadedError

SHORT = ProfileShape((1, 1), (4, 64), (4, 64))


def _batch(rows: int, seq: int) -> Batch:
    ids = np.ones((rows, seq), np.int64)
    return Batch(ids, np.ones_like(ids), np.full(rows, seq))


def _batches(starts: list[int], events: list[tuple[str, ...]]) -> Iterator[Batch]:
    for start in starts:
        events.append(("pull", str(start)))
        ids = np.arange(start, start + 2 * 32, dtype=np.int64).reshape(2, 32)
        yield Batch(ids, np.ones_like(ids), np.full(2, 32))


def _all_within(pool: Pool, profiles: tuple[ProfileShape, ...], batches: Iterator[Batch],
                seconds: float = 10) -> list[dict[str, np.ndarray]]:
    """The pipeline's outputs, failing (not hanging) if it deadlocks on a context or profile it holds."""
    outs: list[dict[str, np.ndarray]] = []
    worker = threading.Thread(target=lambda: outs.extend(pipelined(batches, pool, profiles)), daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), "run_many waited on a context or profile it held itself"
    return outs


def test_rows_are_split_by_what_the_profile_takes_at_that_length() -> None:
    profiles = (ProfileShape((1, 1), (4, 64), (4, 64)), ProfileShape((1, 65), (2, 100), (2, 100)))
    slot = FakeSlot()
    pool = Pool([slot], profiles)
    ids = np.arange(5 * 80, dtype=np.int64).reshape(5, 80)
    out = next(pipelined([Batch(ids, np.ones_like(ids), np.full(5, 80))], pool, profiles))
    assert slot.calls == [(2, 80), (2, 80), (1, 80)]  # the long profile takes two rows at a time
    np.testing.assert_array_equal(out["sentence_embedding"], ids[:, :2].astype(np.float32))
    assert [p["input_ids"].shape for p in split(_batch(9, 16), profiles)] == [(4, 16), (4, 16), (1, 16)]
    with pytest.raises(InvalidInputError, match=r"no engine profile accepts sequence length 101 \(limits: 100"):
        next(pipelined([_batch(1, 101)], pool, profiles))
    assert pool.idle


def test_overlaps_batches_on_two_contexts() -> None:
    events: list[tuple[str, ...]] = []
    profiles = (SHORT, SHORT)
    pool = Pool([FakeSlot("A", events), FakeSlot("B", events)], profiles)
    starts = [0, 1000, 2000, 3000]
    outs = _all_within(pool, profiles, _batches(starts, events))
    for start, out in zip(starts, outs, strict=True):  # in order, each its own batch's result
        assert out["embedding_norm"].tolist() == [start, start + 32]
    # Batch 1 is pulled (collated) and submitted on the other context before batch 0 is collected.
    assert events[:6] == [("pull", "0"), ("submit", "A", "0"), ("pull", "1000"), ("submit", "B", "1000"),
                          ("pull", "2000"), ("collect", "A", "0")]
    assert sum(e[0] == "collect" for e in events) == 4
    assert pool.idle


def test_one_profile_waits_for_itself_not_forever() -> None:
    # Two contexts but one profile: TensorRT forbids running it twice at once, so batches alternate.
    events: list[tuple[str, ...]] = []
    pool = Pool([FakeSlot("A", events), FakeSlot("B", events)], (SHORT,))
    outs = _all_within(pool, (SHORT,), _batches([0, 100, 200], events))
    assert [o["embedding_norm"][0] for o in outs] == [0, 100, 200]
    kinds = [e[0] for e in events if e[0] != "pull"]
    assert kinds == ["submit", "collect"] * 3
    assert pool.idle


def test_failure_frees_every_context() -> None:
    events: list[tuple[str, ...]] = []
    profiles = (SHORT, SHORT)
    slots = [FakeSlot("A", events, fail_on=2000), FakeSlot("B", events, fail_on=2000)]
    pool = Pool(slots, profiles)  # type: ignore[arg-type]
    with pytest.raises(BackendError, match=r"TensorRT failed.*cudaErrorIllegalAddress"):
        list(pipelined(_batches([0, 1000, 2000, 3000], events), pool, profiles))
    assert pool.idle
    assert sum(s.stream.syncs for s in slots) >= 2  # what was queued was waited for before reuse
    # Stopping early (a caller that breaks out) frees the contexts too.
    outputs = pipelined(_batches([0, 1000, 3000], events), pool, profiles)
    assert next(outputs)["embedding_norm"][0] == 0
    outputs.close()
    assert pool.idle
    again = next(pipelined(_batches([5000], events), pool, profiles))
    assert again["embedding_norm"].tolist() == [5000, 5032]


def test_client_errors_pass_through_unchanged() -> None:
    pool = Pool([FakeSlot()], (SHORT,))
    # A length no profile takes: the pipeline's own check.
    with pytest.raises(InvalidInputError, match="no engine profile accepts sequence length 65") as info:
        list(pipelined([_batch(1, 65)], pool, (SHORT,)))
    assert not isinstance(info.value, BackendError)

    # Collation is lazy: an error raised while the caller makes the next batch is the caller's.
    def batches(error: Exception) -> Iterator[Batch]:
        yield _batch(1, 8)
        raise error

    for error in (InvalidInputError("text 3 is not a string"), OverloadedError("queue full")):
        with pytest.raises(type(error)) as raised:
            list(pipelined(batches(error), pool, (SHORT,)))
        assert raised.value is error
    assert pool.idle


def test_binding_failures_are_backend_errors_named_for_the_backend() -> None:
    pool = Pool([FakeSlot(fail_on=1)], (SHORT,))
    with pytest.raises(BackendError, match=r"TensorRT failed on a batch of shape \(1, 8\).*cudaErrorIllegalAddress"):
        list(pipelined([_batch(1, 8)], pool, (SHORT,)))
    with pytest.raises(BackendError, match=r"^Other failed"):
        list(pipelined([_batch(1, 8)], pool, (SHORT,), name="Other"))
    assert pool.idle
