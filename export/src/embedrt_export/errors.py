"""Errors of the export stage. All derive from the runtime's ``EmbedrtError``."""

from __future__ import annotations

from embedrt.errors import EmbedrtError


class ExportError(EmbedrtError):
    """The export could not be done; the message says why and what to do."""


class SourceNotFoundError(ExportError):
    """The model is neither a local directory nor reachable on the hub."""


class ParityError(ExportError):
    """The exported graph does not match the reference model within tolerance."""

    def __init__(self, message: str, report: dict[str, object]) -> None:
        super().__init__(message)
        self.report = report


class QuantizationError(ExportError):
    """INT8 quantization failed or missed its quality gate; the artefact was left as it was."""

    def __init__(self, message: str, report: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.report = report or {}
