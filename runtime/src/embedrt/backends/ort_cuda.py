"""ONNX Runtime on CUDA: I/O binding into buffers at fixed addresses, CUDA graphs for short shapes.

A short query is launch-bound on a GPU: a 28-layer model issues a few hundred kernels for a few
microseconds of work each. ONNX Runtime's CUDA graphs (provider option ``enable_cuda_graph``)
record those launches once per input shape and replay them in one call. A captured graph bakes in
the addresses of its inputs and outputs, so each captured shape gets its own device buffers,
allocated once and bound once; a run copies the batch into them (``OrtValue.update_inplace``) and
replays the graph selected by the ``gpu_graph_id`` run option — one id per (rows, sequence) slot.

Only short shapes are captured (``rows x sequence <= cuda_graph_max_tokens``): there launch
overhead dominates, and the number of graphs (each keeps its own activation memory) stays small.
Rows are padded up to a power of two so that a handful of slots covers every batch; pad rows carry
the pad id and an all-zero mask, and their outputs are dropped. Longer batches run uncaptured
(``gpu_graph_id`` -1) with a fresh binding per call, as before.

ONNX Runtime refuses graph capture for a session that copies between host and device inside the
graph (Memcpy nodes); the backend then opens a session without it and says why in ``describe()``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ArtefactError
from ..manifest import Manifest
from .base import Batch

UNCAPTURED = "-1"
SEQUENCE = "sequence"  # the manifest's name for the sequence axis; any other named axis past the batch is unknown


def output_tails(manifest: Manifest) -> dict[str, tuple[str | int, ...]]:
    """Each output's shape after the batch axis, from the manifest (``sentence_embedding``: (hidden,);
    ``score``: (); ``last_hidden_state``: ("sequence", hidden)), so captured buffers can be preallocated."""
    tails = {}
    for spec in manifest.outputs:
        tail = tuple(spec.shape[1:])
        unknown = [d for d in tail if isinstance(d, str) and d != SEQUENCE]
        if unknown or spec.dtype != "float32":
            raise ArtefactError(f"output {spec.name} ({spec.dtype} {list(spec.shape)}) has axes or a type the "
                                f"CUDA runner cannot preallocate; re-export the model")
        tails[spec.name] = tail
    return tails


def row_slot(rows: int) -> int:
    """Rows padded up to a power of two: the row counts that get a captured graph."""
    return 1 << max(0, rows - 1).bit_length()


@dataclass
class _Slot:
    """One captured shape: device buffers bound once, and the graph id that replays it."""

    rows: int
    sequence: int
    buffers: dict[str, Any]  # input / output name -> OrtValue on the device, never reallocated
    binding: Any
    run_options: Any


class CudaRunner:
    """Runs batches through a CUDA session: captured graphs for short shapes, plain binding otherwise."""

    def __init__(self, ort: Any, session: Any, manifest: Manifest, device_id: int, graphs: bool,
                 max_graph_tokens: int, device: str = "cuda") -> None:
        """Feeds ``manifest.input_names`` and returns every ``manifest.output_names`` output by name.
        ``device`` is "cuda" in use; "cpu" runs the same binding logic on a CPU session (tests)."""
        self._device = device
        self._ort = ort
        self._session = session
        self._inputs = manifest.input_names
        self._outputs = output_tails(manifest)
        self._device_id = device_id
        self._pad_id = manifest.pad_token_id
        self._graphs = graphs
        self._max_graph_tokens = max_graph_tokens
        self._slots: dict[tuple[int, int], _Slot] = {}
        self._lock = threading.Lock()  # one replay at a time: slots share nothing, the stream does
        self._uncaptured = ort.RunOptions()
        if graphs:
            self._uncaptured.add_run_config_entry("gpu_graph_id", UNCAPTURED)

    @property
    def captured_shapes(self) -> list[tuple[int, int]]:
        return sorted(self._slots)

    def captures(self, batch: Batch) -> bool:
        rows, sequence = batch.shape
        return self._graphs and row_slot(rows) * sequence <= self._max_graph_tokens

    def run(self, batch: Batch) -> dict[str, np.ndarray]:
        """Every output, by name."""
        if self.captures(batch):
            return self._run_captured(batch)
        binding = self._session.io_binding()  # one per call: bindings are not shared between threads
        for name, value in batch.feed(self._inputs).items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in self._outputs:
            binding.bind_output(name, self._device, self._device_id)
        self._session.run_with_iobinding(binding, self._uncaptured)
        return dict(zip(self._outputs, binding.copy_outputs_to_cpu(), strict=True))

    def _slot(self, rows: int, sequence: int) -> _Slot:
        key = (rows, sequence)
        slot = self._slots.get(key)
        if slot is not None:
            return slot
        ort, session = self._ort, self._session
        binding = session.io_binding()
        inputs = {}
        for name in self._inputs:
            inputs[name] = ort.OrtValue.ortvalue_from_shape_and_type([rows, sequence], np.int64, self._device,
                                                                     self._device_id)
            binding.bind_ortvalue_input(name, inputs[name])
        outputs = {}
        for name, tail in self._outputs.items():  # preallocated too: a replay writes where it captured
            shape = [rows, *(sequence if d == SEQUENCE else int(d) for d in tail)]
            outputs[name] = ort.OrtValue.ortvalue_from_shape_and_type(shape, np.float32, self._device, self._device_id)
            binding.bind_ortvalue_output(name, outputs[name])
        options = ort.RunOptions()
        # Graph id 0 is ONNX Runtime's own; ours start at 1, one per captured shape.
        options.add_run_config_entry("gpu_graph_id", str(len(self._slots) + 1))
        slot = _Slot(rows, sequence, {**inputs, **outputs}, binding, options)
        self._slots[key] = slot
        return slot

    def _run_captured(self, batch: Batch) -> dict[str, np.ndarray]:
        rows, sequence = batch.shape
        padded = row_slot(rows)
        feed = {}  # pad rows: the pad id, an all-zero mask and type ids
        for name, value in batch.feed(self._inputs).items():
            feed[name] = np.full((padded, sequence), self._pad_id if name == "input_ids" else 0, dtype=np.int64)
            feed[name][:rows] = value
        with self._lock:
            slot = self._slot(padded, sequence)
            for name, value in feed.items():
                slot.buffers[name].update_inplace(value)
            self._session.run_with_iobinding(slot.binding, slot.run_options)
            values = slot.binding.copy_outputs_to_cpu()
        return {name: np.ascontiguousarray(v[:rows]) for name, v in zip(self._outputs, values, strict=True)}


__all__ = ["CudaRunner", "output_tails", "row_slot"]
