"""TensorRT slots and their pool (``embedrt.backends.trt_slots``) on CPU.

The pool is plain Python. Slots run over ``FakeCudart`` (host memory behind cuda-python's API) and a
fake execution context, so the staging, the int64 -> int32 cast, the buffer reuse and the freeing
are the real code's.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from trt_fakes import PLAN, FakeSlot, FakeTensorRT, embed_rows, install_fake_cuda

from embedrt.backends.trt_loader import deserialize, engine_io
from embedrt.backends.trt_slots import Pool, open_slots
from embedrt.engines import ProfileShape
from embedrt.errors import BackendError

PROFILES = (ProfileShape((1, 1), (4, 64), (4, 64)), ProfileShape((1, 65), (2, 128), (2, 128)))


def test_pool_never_runs_one_profile_twice_at_once() -> None:
    profiles = (ProfileShape((1, 1), (4, 64), (4, 64)), ProfileShape((1, 1), (4, 64), (4, 64)),
                ProfileShape((1, 65), (2, 128), (2, 128)))
    pool = Pool([FakeSlot(), FakeSlot(), FakeSlot()], profiles)
    first = pool.acquire(2, 32)
    second = pool.acquire(2, 32)  # the copy of the short profile
    assert first is not None and second is not None
    assert {first[1], second[1]} == {0, 1}
    got: list[int] = []
    waiter = threading.Thread(target=lambda: got.append(pool.acquire(1, 16)[1]))  # type: ignore[index]
    waiter.start()
    time.sleep(0.2)
    assert not got  # both short profiles busy: it waits although a slot is free
    long = pool.acquire(1, 100)  # the long profile is free, and so is a slot
    assert long is not None and long[1] == 2
    assert pool.acquire(1, 16, wait=False) is None and not pool.idle
    pool.release(*first)
    waiter.join(5)
    assert got == [first[1]]
    with pytest.raises(BackendError, match="no optimisation profile covers"):
        pool.acquire(3, 100)


def test_pool_prefers_a_slot_already_on_the_profile() -> None:
    a, b = FakeSlot("A"), FakeSlot("B")
    b.profile = 1
    pool = Pool([a, b], PROFILES)
    assert pool.acquire(1, 100) == (b, 1)  # no profile switch to enqueue
    assert pool.acquire(1, 16) == (a, 0)


def _engine(trt: FakeTensorRT) -> tuple[object, object]:
    _, engine = deserialize(trt, trt.record(), PLAN)
    return engine, engine_io(trt, engine, ("input_ids", "attention_mask"), ("sentence_embedding", "embedding_norm"))


def test_a_slot_stages_casts_runs_and_reuses_its_buffers(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cuda = install_fake_cuda(monkeypatch)
    trt = FakeTensorRT(PROFILES)
    engine, io = _engine(trt)
    (slot,) = open_slots(engine, io, 1)  # type: ignore[arg-type]
    pointers = {name: buffer.ptr for name, buffer in slot.device.items()}
    assert slot.host["input_ids"].array.dtype == np.int32  # the engine binds int32 ids: staged as such
    rng = np.random.default_rng(0)
    for rows, seq, profile in [(1, 16, 0), (4, 64, 0), (2, 128, 1), (3, 7, 0)]:
        ids = rng.integers(1, 30000, (rows, seq)).astype(np.int64)
        mask = np.ones_like(ids)
        mask[:, seq // 2 + 1:] = 0
        shapes = slot.submit(profile, {"input_ids": ids, "attention_mask": mask})
        assert shapes == {"sentence_embedding": (rows, trt.hidden), "embedding_norm": (rows,)}
        assert slot.profile == profile
        out = slot.collect(shapes)
        np.testing.assert_allclose(out["sentence_embedding"], embed_rows(ids, mask, trt.hidden), rtol=1e-6)
        assert out["sentence_embedding"].dtype == np.float32
    assert {name: buffer.ptr for name, buffer in slot.device.items()} == pointers  # allocated once
    with pytest.raises(BackendError, match=r"rejected shape \(3, 100\) for input_ids under profile 0"):
        slot.submit(0, {"input_ids": np.ones((3, 100), np.int64), "attention_mask": np.ones((3, 100), np.int64)})
    slot.wait()
    slot.close()
    assert not fake_cuda.memory and not fake_cuda.streams  # every buffer and the stream given back


def test_slots_are_all_or_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cuda = install_fake_cuda(monkeypatch)
    engine, io = _engine(FakeTensorRT(PROFILES, max_contexts=1))
    with pytest.raises(BackendError, match="could not create an execution context"):
        open_slots(engine, io, 2)  # type: ignore[arg-type]
    assert not fake_cuda.memory and not fake_cuda.streams  # the first slot was freed
