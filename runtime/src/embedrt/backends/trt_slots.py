"""TensorRT execution slots and the pool that hands them out with an optimisation profile.

A slot is one execution context with its own CUDA stream, device buffers sized at the profile
maxima and pinned host staging, all allocated once in ``open`` and reused by every run: a run copies
in, sets shapes and addresses, enqueues ``execute_async_v3`` and copies out on the slot's stream,
and only ``collect`` waits. The pool pairs a free slot with a free profile covering the batch shape.

Two runs never use one optimisation profile at the same time (TensorRT's rule for dynamic shapes
across concurrent contexts), so concurrency comes from different profiles, or from an engine built
with copies of each profile (``embedrt build --contexts N``).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from ..engines import ProfileShape
from ..errors import BackendError
from . import cuda
from .trt_loader import EngineIO


class Slot:
    """One execution context with its stream and preallocated device / pinned host buffers."""

    def __init__(self, context: Any, io: EngineIO) -> None:
        self.context = context
        self.stream = cuda.Stream()
        self.profile = -1  # set on first use: switching is enqueued on this slot's stream
        self.io = io.dtypes
        self.inputs = io.inputs
        self.device: dict[str, cuda.DeviceBuffer] = {}
        self.host: dict[str, cuda.PinnedBuffer] = {}
        for name, dtype in self.io.items():
            elems = io.max_rows * (io.max_seq if name in self.inputs else io.row_elems[name])
            self.device[name] = cuda.DeviceBuffer(elems * dtype.itemsize)
            self.host[name] = cuda.PinnedBuffer(elems * dtype.itemsize, dtype)

    def submit(self, profile: int, inputs: dict[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
        """Enqueue copies in, the engine and copies out on this slot's stream; return the output shapes.

        Nothing waits here: the caller may submit on another slot before ``collect``-ing this one.
        """
        ctx, stream = self.context, self.stream
        rows, seq = inputs["input_ids"].shape
        if profile != self.profile:
            if not ctx.set_optimization_profile_async(profile, stream.handle):
                raise BackendError(f"TensorRT refused optimisation profile {profile}")
            self.profile = profile
        for name in self.inputs:
            count = rows * seq
            staged = self.host[name].array[:count].reshape(rows, seq)
            np.copyto(staged, inputs[name], casting="unsafe")  # int64 -> int32 where the engine binds int32
            cuda.copy_to_device(self.device[name], self.host[name], count * self.io[name].itemsize, stream)
            if not ctx.set_input_shape(name, (rows, seq)):
                raise BackendError(f"TensorRT rejected shape {(rows, seq)} for {name} under profile {profile}")
        for name, buffer in self.device.items():
            ctx.set_tensor_address(name, buffer.ptr)
        if not ctx.execute_async_v3(stream.handle):
            raise BackendError(f"TensorRT execute_async_v3 failed on a batch of shape {(rows, seq)}")
        shapes = {}
        for name in self.io:
            if name in self.inputs:
                continue
            shape = tuple(ctx.get_tensor_shape(name))
            shapes[name] = shape
            cuda.copy_to_host(self.host[name], self.device[name], int(np.prod(shape)) * self.io[name].itemsize,
                              stream)
        return shapes

    def collect(self, shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
        """Wait for this slot's stream, then copy the outputs out of pinned memory (the slot is reusable)."""
        self.stream.synchronize()
        return {name: self.host[name].array[: int(np.prod(shape))].reshape(shape).astype(np.float32, copy=True)
                for name, shape in shapes.items()}

    def wait(self) -> None:
        """Block until nothing queued on this slot can still read or write its buffers."""
        self.stream.synchronize()

    def close(self) -> None:
        for device in self.device.values():
            device.close()
        for host in self.host.values():
            host.close()
        self.stream.close()
        self.context = None


def open_slots(engine: Any, io: EngineIO, count: int, config: Any = None) -> list[Slot]:
    """``count`` slots on ``engine`` (contexts made with the runtime ``config`` where there is one).

    All or nothing: a context or buffer that cannot be made frees the slots made before it.
    """
    slots: list[Slot] = []
    try:
        for _ in range(count):
            context = engine.create_execution_context(config) if config else engine.create_execution_context()
            if context is None:
                raise BackendError("TensorRT could not create an execution context (GPU memory?)")
            slots.append(Slot(context, io))
    except BaseException:
        for slot in slots:
            slot.close()
        raise
    return slots


class Pool:
    """Hands out a free slot and a free profile covering the shape; waits when none is free.

    Slots are anything with a ``profile`` attribute (the profile it last ran): the pool prefers a
    slot already on the profile it hands out, since switching costs an enqueue.
    """

    def __init__(self, slots: list[Any], profiles: tuple[ProfileShape, ...]) -> None:
        self._free = list(slots)
        self._count = len(slots)
        self.profiles = profiles
        self._busy: set[int] = set()
        self._cond = threading.Condition()

    @property
    def idle(self) -> bool:
        """Every slot is back and no profile is in use: nothing was leaked by a run."""
        with self._cond:
            return len(self._free) == self._count and not self._busy

    def acquire(self, rows: int, seq: int, wait: bool = True) -> tuple[Any, int] | None:
        """A free slot and a free profile covering ``rows x seq``; ``None`` if none is free and not ``wait``."""
        fitting = [i for i, p in enumerate(self.profiles) if p.covers(rows, seq)]
        if not fitting:
            raise BackendError(f"no optimisation profile covers a batch of {rows}x{seq}")
        # Tightest profile first: its kernels were tuned closest to this shape.
        fitting.sort(key=lambda i: self.profiles[i].max[0] * self.profiles[i].max[1])
        with self._cond:
            while True:
                idle = [i for i in fitting if i not in self._busy]
                if self._free and idle:
                    profile = idle[0]
                    slot = next((s for s in self._free if s.profile == profile), self._free[0])
                    self._free.remove(slot)
                    self._busy.add(profile)
                    return slot, profile
                if not wait:
                    return None
                self._cond.wait()

    def release(self, slot: Any, profile: int) -> None:
        with self._cond:
            self._free.append(slot)
            self._busy.discard(profile)
            self._cond.notify_all()


__all__ = ["Pool", "Slot", "open_slots"]
