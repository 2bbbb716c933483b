"""After the backend: Matryoshka truncation, renormalisation, unnormalised vectors.

Pooling and L2 normalisation themselves run inside the exported graph; the graph also returns the
norm before normalisation so that unnormalised vectors can be recovered here (raw = unit * norm)
without a second graph.
"""

from __future__ import annotations

import numpy as np

from .errors import InvalidInputError

_EPS = 1e-12  # the graph's clamp: a zero vector stays zero instead of becoming NaN


def check_dimensions(dimensions: int | None, allowed: tuple[int, int]) -> int:
    """The number of dimensions to return; InvalidInputError outside the model's Matryoshka range."""
    low, high = allowed
    if dimensions is None:
        return high
    if isinstance(dimensions, bool) or not isinstance(dimensions, (int, np.integer)):
        raise InvalidInputError(f"dimensions must be an integer, got {type(dimensions).__name__}")
    if not low <= dimensions <= high:
        if low == high:
            raise InvalidInputError(f"this model has no Matryoshka range: dimensions must be {high} (or omitted)")
        raise InvalidInputError(f"dimensions must be between {low} and {high} for this model, got {dimensions}")
    return int(dimensions)


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, _EPS)).astype(np.float32, copy=False)


def finish(unit: np.ndarray, norms: np.ndarray, dimensions: int, normalize: bool) -> np.ndarray:
    """Truncate to ``dimensions``; renormalise (Matryoshka) or return raw pooled values."""
    if not normalize:
        # Raw pooled vector, truncated; not renormalised, as the model itself would give it.
        return np.ascontiguousarray((unit * norms[:, None])[:, :dimensions], dtype=np.float32)
    if dimensions == unit.shape[1]:
        return np.ascontiguousarray(unit, dtype=np.float32)
    # Matryoshka: a prefix of a unit vector is not a unit vector; renormalise it.
    return l2_normalize(np.ascontiguousarray(unit[:, :dimensions]))


__all__ = ["check_dimensions", "finish", "l2_normalize"]
