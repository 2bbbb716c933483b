"""Configuration: one frozen dataclass per layer. The CLI and environment map onto these in one place."""

from __future__ import annotations

from dataclasses import dataclass

# Sequence-length buckets shared by the batcher and TensorRT optimisation profiles: padding a batch
# up to one of these keeps the number of distinct shapes (profiles, CUDA graphs) small.
DEFAULT_SEQUENCE_BUCKETS: tuple[int, ...] = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)


@dataclass(frozen=True)
class BatchingConfig:
    max_batch_tokens: int = 16384  # padded tokens per micro-batch (rows x bucketed length)
    max_batch_size: int = 64  # rows per micro-batch
    sequence_buckets: tuple[int, ...] = DEFAULT_SEQUENCE_BUCKETS


@dataclass(frozen=True)
class BackendConfig:
    precision: str = "auto"  # auto | fp32 | fp16 | int8
    device: str = "auto"  # auto | cpu | cuda
    device_id: int = 0
    intra_op_threads: int = 0  # 0: the backend's default (all cores)
    inter_op_threads: int = 1
