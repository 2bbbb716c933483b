"""pyarrow, imported only where Parquet is read or written: it is the runtime's optional ``bulk`` extra."""

from __future__ import annotations

from types import ModuleType

from ..errors import EmbedrtError

INSTALL_HINT = "pip install 'embedrt[bulk]'"


def pyarrow(what: str) -> tuple[ModuleType, ModuleType]:
    """``(pyarrow, pyarrow.parquet)``, or an error saying that ``what`` needs the bulk extra."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise EmbedrtError(f"{what} needs pyarrow, which is not installed: {INSTALL_HINT}") from exc
    return pa, pq
