"""Pipelined ``run_many`` over a pool of execution slots: plain Python, no CUDA or TensorRT.

While one batch runs on a slot, the next is collated, copied in and enqueued on another, so one
batch's copies and host work hide under the other's compute. The rules that make this safe are
here, apart from the CUDA that does the work (``trt_slots``), so they are tested with fakes:

- a batch with more rows than any profile takes at its length is split into parts;
- at most one part per free slot is in flight; when none is free, the caller's own oldest part is
  collected first, so one caller never waits on a slot it holds itself;
- outputs come back in order, one merged dict per batch;
- on an error, or a caller that stops early, queued work is waited for before its slot is released;
- an ``EmbedrtError`` (the backend's own, or the caller's while collating the next batch) passes
  through unchanged; anything else (a CUDA / TensorRT binding error) becomes a ``BackendError``.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Generator, Iterable, Sequence
from typing import Any, Protocol

import numpy as np

from ..engines import ProfileShape
from ..errors import BackendError, EmbedrtError, InvalidInputError
from .base import Batch

log = logging.getLogger(__name__)

Arrays = dict[str, np.ndarray]
Shapes = dict[str, tuple[int, ...]]


class Slot(Protocol):
    """What the pipeline needs of an execution slot (``trt_slots.Slot``, or a test's fake)."""

    def submit(self, profile: int, inputs: Arrays) -> Shapes:
        """Enqueue ``inputs`` under ``profile`` without waiting; the output shapes."""

    def collect(self, shapes: Shapes) -> Arrays:
        """Wait for the submitted work; its outputs."""

    def wait(self) -> None:
        """Wait until queued work no longer touches the slot's buffers (its outputs are dropped)."""


class SlotPool(Protocol):
    """Hands out a free slot and a free profile index for a shape (``trt_slots.Pool``)."""

    def acquire(self, rows: int, seq: int, wait: bool = True) -> tuple[Any, int] | None: ...

    def release(self, slot: Any, profile: int) -> None: ...


def split(batch: Batch, profiles: Sequence[ProfileShape],
          input_names: Sequence[str] = ("input_ids", "attention_mask")) -> list[Arrays]:
    """The batch's ``input_names`` (``manifest.input_names``) in parts of at most as many rows as a profile
    takes at its length.

    A length no profile takes is the caller's error (``InvalidInputError``), not the backend's.
    """
    rows, seq = batch.shape
    cap = max((p.max[0] for p in profiles if p.min[1] <= seq <= p.max[1]), default=0)
    if not cap or rows < 1:
        raise InvalidInputError(f"no engine profile accepts sequence length {seq} "
                                f"(limits: {max((p.max[1] for p in profiles), default=0)} tokens)")
    feed = batch.feed(input_names)
    return [{name: value[start:start + cap] for name, value in feed.items()} for start in range(0, rows, cap)]


class _Job:
    """One batch: its parts' inputs, and their outputs once collected."""

    def __init__(self, shape: tuple[int, int], inputs: list[Arrays]) -> None:
        self.shape = shape
        self.inputs = inputs
        self.outputs: list[Arrays | None] = [None] * len(inputs)

    @property
    def done(self) -> bool:
        return all(out is not None for out in self.outputs)

    def merged(self) -> Arrays:
        parts = [out for out in self.outputs if out is not None]
        if len(parts) == 1:
            return parts[0]
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


class _Part:
    """One part of a job, submitted on ``slot`` under ``profile`` and not yet collected."""

    def __init__(self, job: _Job, index: int, slot: Slot, profile: int) -> None:
        self.job, self.index, self.slot, self.profile = job, index, slot, profile
        self.shapes: Shapes = {}


def pipelined(batches: Iterable[Batch], pool: SlotPool, profiles: Sequence[ProfileShape],
              name: str = "TensorRT", input_names: Sequence[str] = ("input_ids", "attention_mask"),
              ) -> Generator[Arrays, None, None]:
    """Each batch's outputs, in order, with the next batch enqueued before the current one is waited for.

    ``batches`` is consumed lazily: batch i+1 is pulled (collated by the caller) while batch i runs.
    ``name`` words the ``BackendError`` a failing slot becomes; ``input_names`` are the engine's inputs.
    """
    inflight: deque[_Part] = deque()
    jobs: deque[_Job] = deque()
    try:
        for batch in batches:
            job = _Job(batch.shape, split(batch, profiles, input_names))
            jobs.append(job)
            for index, inputs in enumerate(job.inputs):
                rows, seq = inputs["input_ids"].shape
                got = pool.acquire(rows, seq, wait=False)
                while got is None and inflight:  # everything usable is ours and busy: finish the oldest
                    _collect(inflight.popleft(), pool)
                    got = pool.acquire(rows, seq, wait=False)
                slot, profile = got or pool.acquire(rows, seq)  # type: ignore[misc]  # held by other threads
                part = _Part(job, index, slot, profile)
                try:
                    part.shapes = slot.submit(profile, inputs)
                except BaseException:
                    _abandon(part, pool)
                    raise
                inflight.append(part)
            while jobs and jobs[0].done:
                yield jobs.popleft().merged()
        while inflight:
            _collect(inflight.popleft(), pool)
        while jobs:
            yield jobs.popleft().merged()
    except EmbedrtError:  # ours, or the caller's while collating a batch: a client error stays one
        raise
    except Exception as exc:  # CUDA / TensorRT binding errors
        raise BackendError(f"{name} failed on a batch of shape {jobs[-1].shape if jobs else '?'}: {exc}") from exc
    finally:  # an error, or a caller that stopped early: wait for what is queued, free the slots
        while inflight:
            _abandon(inflight.popleft(), pool)


def _collect(part: _Part, pool: SlotPool) -> None:
    try:
        part.job.outputs[part.index] = part.slot.collect(part.shapes)
    finally:
        pool.release(part.slot, part.profile)


def _abandon(part: _Part, pool: SlotPool) -> None:
    try:
        part.slot.wait()  # its buffers may still be read or written by queued work
    except Exception as exc:
        log.warning("stream did not synchronise while abandoning a batch: %s", exc)
    finally:
        pool.release(part.slot, part.profile)


__all__ = ["Slot", "SlotPool", "pipelined", "split"]
