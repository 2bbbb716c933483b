"""Optimisation profiles from the runtime's (batch, sequence) buckets.

The batcher pads a micro-batch to a sequence bucket and fills rows up to ``max_batch_tokens``
(``embedrt.config.BatchingConfig``). A profile covers a range of lengths spanning a factor of four
(two buckets), and its batch maximum is what the batcher can send at the shortest bucket of the
range, so its box (max rows x max length) stays within twice the token budget: TensorRT sizes
activation memory for that box. ``opt`` is the saturated shape at the range's longest bucket, the
shape that throughput-bound serving runs most (e.g. 32x512 with the default 16,384-token budget).
"""

from __future__ import annotations

from embedrt.config import DEFAULT_SEQUENCE_BUCKETS, BatchingConfig
from embedrt.engines import ProfileShape

from ..errors import ExportError

# Upper sequence edge of each default profile: 128, 512, 2048, 8192, 32768.
SEQUENCE_EDGES: tuple[int, ...] = DEFAULT_SEQUENCE_BUCKETS[3::2]


def _rows(tokens: int, sequence: int, batching: BatchingConfig) -> int:
    return max(1, min(batching.max_batch_size, tokens // sequence))


def profiles_from_edges(edges: tuple[int, ...], max_length: int, batching: BatchingConfig) -> tuple[ProfileShape, ...]:
    """One profile per length range ``(previous edge, edge]``, capped at ``max_length``."""
    profiles = []
    low = 0
    for edge in sorted(set(edges)):
        if low >= max_length:
            break
        high = min(edge, max_length)
        inside = [b for b in DEFAULT_SEQUENCE_BUCKETS if low < b <= high] or [high]
        max_rows = _rows(batching.max_batch_tokens, min(inside), batching)
        opt_rows = min(max_rows, _rows(batching.max_batch_tokens, high, batching))
        profiles.append(ProfileShape((1, low + 1), (opt_rows, high), (max_rows, high)))
        low = high
    if low < max_length:  # edges stop short of the model's maximum: one more range up to it
        profiles.append(ProfileShape((1, low + 1), (1, max_length), (_rows(batching.max_batch_tokens, max_length,
                                                                          batching), max_length)))
    return tuple(profiles)


def default_profiles(max_length: int, batching: BatchingConfig = BatchingConfig()) -> tuple[ProfileShape, ...]:
    return profiles_from_edges(SEQUENCE_EDGES, max_length, batching)


def _shape(text: str) -> tuple[int, int]:
    rows, _, seq = text.strip().lower().partition("x")
    try:
        return int(rows), int(seq)
    except ValueError:
        raise ExportError(f"{text!r} is not a shape; write ROWSxSEQUENCE, e.g. 32x512") from None


def parse_profiles(spec: str, max_length: int, batching: BatchingConfig = BatchingConfig()) -> tuple[ProfileShape, ...]:
    """``--profiles``: sequence edges (``128,512``) or explicit ``MIN:OPT:MAX`` shapes (``1x1:8x64:64x128``).

    Both kinds may not be mixed; explicit profiles are checked against ``max_length``.
    """
    entries = [e.strip() for e in spec.split(",") if e.strip()]
    if not entries:
        raise ExportError("--profiles is empty; give sequence edges (128,512) or MIN:OPT:MAX shapes")
    if all(e.isdigit() for e in entries):
        return profiles_from_edges(tuple(int(e) for e in entries), max_length, batching)
    if any(e.isdigit() for e in entries):
        raise ExportError("--profiles mixes sequence edges and explicit shapes; use one kind")
    profiles = []
    for entry in entries:
        parts = entry.split(":")
        if len(parts) != 3:
            raise ExportError(f"profile {entry!r} needs three shapes MIN:OPT:MAX, e.g. 1x1:8x64:64x128")
        profile = ProfileShape(*(_shape(p) for p in parts))
        try:
            profile.check()
        except Exception as exc:
            raise ExportError(str(exc)) from None
        if profile.max[1] > max_length:
            raise ExportError(f"profile {entry} reaches {profile.max[1]} tokens, past the model's "
                              f"max_length {max_length}")
        profiles.append(profile)
    return tuple(profiles)


def with_copies(profiles: tuple[ProfileShape, ...], copies: int) -> tuple[ProfileShape, ...]:
    """Each profile ``copies`` times: concurrent contexts may then run the same bucket at once."""
    if copies < 1:
        raise ExportError("--contexts must be at least 1")
    return tuple(p for p in profiles for _ in range(copies))


__all__ = ["SEQUENCE_EDGES", "default_profiles", "parse_profiles", "profiles_from_edges", "with_copies"]
