"""Stand-ins for the TensorRT backend's CUDA parts, so its scheduling and error paths run on CPU."""

from __future__ import annotations

import numpy as np


class FakeStream:
    def __init__(self, slot: FakeSlot) -> None:
        self.slot, self.syncs = slot, 0

    def synchronize(self) -> None:  # after this, nothing queued on the slot touches its buffers
        self.syncs += 1
        self.slot.queued = False


class FakeSlot:
    """A slot without CUDA: ``submit`` computes, ``collect`` hands it over; both log to ``events``."""

    def __init__(self, name: str = "slot", events: list[tuple[str, ...]] | None = None,
                 fail_on: int | None = None) -> None:
        self.name, self.events, self.fail_on = name, events if events is not None else [], fail_on
        self.profile = -1
        self.calls: list[tuple[int, int]] = []
        self.stream = FakeStream(self)
        self.queued = False
        self.pending: dict[str, np.ndarray] | None = None

    def submit(self, profile: int, inputs: dict[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
        assert not self.queued, "a slot was reused while work queued on it could still touch its buffers"
        ids = inputs["input_ids"]
        if ids[0, 0] == self.fail_on:
            raise RuntimeError("cudaErrorIllegalAddress")
        self.profile = profile
        self.calls.append(ids.shape)
        self.events.append(("submit", self.name, str(ids[0, 0])))
        self.queued = True
        self.pending = {"sentence_embedding": ids[:, :2].astype(np.float32),
                        "embedding_norm": ids[:, 0].astype(np.float32)}
        return {name: value.shape for name, value in self.pending.items()}

    def collect(self, shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
        self.stream.synchronize()
        out, self.pending = self.pending, None
        assert out is not None and {n: v.shape for n, v in out.items()} == shapes
        self.events.append(("collect", self.name, str(out["embedding_norm"][0].astype(int))))
        return out
