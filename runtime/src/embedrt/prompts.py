"""How texts become model input: the artefact's prompt templates, and the one rule for instructions.

An *instruction* is what instruction-tuned embedding models (Qwen3-Embedding) put in front of a
query: ``Instruct: {instruction}\\nQuery:{text}``. It is called that everywhere: ``embed(instruction=)``,
``embed_queries(instruction=)``, ``embedrt embed --instruction``, the request field ``instruction``
and the manifest's ``default_instruction``. Every caller (the Embedder, the server's scheduler, the
TensorRT verifier, calibration) formats through :class:`Prompts`, so there is one place that decides
whether an instruction is wanted, missing or refused, and one wording of the error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .errors import ArtefactError, InvalidFieldError

TEXT = "{text}"
INSTRUCTION = "{instruction}"
_LEGACY_INSTRUCTION = "{task}"  # manifests written before the name was settled
QUERY = "{query}"
DOCUMENT = "{document}"
_PLACEHOLDER = re.compile(r"\{(?:text|instruction|query|document)\}")


@dataclass(frozen=True)
class Prompts:
    """Text templates. ``{text}`` is the input; ``{instruction}`` the query's instruction."""

    query: str = TEXT
    document: str = TEXT
    default_instruction: str | None = None

    def __post_init__(self) -> None:
        for kind, template in (("query", self.query), ("document", self.document)):
            if not isinstance(template, str) or TEXT not in template:
                raise ArtefactError(f"the {kind} prompt template {template!r} has no {TEXT}; re-export the model")
        if INSTRUCTION in self.document:
            raise ArtefactError(f"the document template {self.document!r} cannot take an instruction; re-export")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Prompts:
        """From a manifest's ``prompts``; reads the earlier names (``{task}``, ``default_task``) too."""
        query = str(data.get("query", TEXT)).replace(_LEGACY_INSTRUCTION, INSTRUCTION)
        default = data.get("default_instruction", data.get("default_task"))
        return cls(query=query, document=str(data.get("document", TEXT)), default_instruction=default)

    @property
    def takes_instruction(self) -> bool:
        return INSTRUCTION in self.query

    def check_instruction(self, instruction: str | None) -> None:
        """Raise ``InvalidFieldError("instruction", ...)`` where a query cannot be formatted with
        ``instruction`` (None or empty: the default): one given to a template with no place for it
        (refused, never silently dropped), or none where the template needs one and has no default."""
        if instruction is not None and not self.takes_instruction:
            raise InvalidFieldError("instruction", f"this model takes no instruction (its query template is "
                                    f"{self.query!r}); leave the instruction out")
        if self.takes_instruction and not (instruction or self.default_instruction):
            raise InvalidFieldError("instruction", f"this model's query template {self.query!r} needs an "
                                    "instruction and the model has no default; pass a non-empty one")

    def format_query(self, text: str, instruction: str | None = None) -> str:
        """``text`` as a query: the template with ``instruction`` (None or empty: the default) filled in."""
        self.check_instruction(instruction)
        return _fill(self.query, {TEXT: text, INSTRUCTION: instruction or self.default_instruction or ""})

    def format_document(self, text: str) -> str:
        return _fill(self.document, {TEXT: text})


@dataclass(frozen=True)
class PairPrompt:
    """How a (query, document) pair becomes one reranker input.

    ``encoding`` "template" (Qwen3-Reranker): ``prefix`` + ``template`` filled with the instruction,
    query and document + ``suffix``; only the filled template is truncated, so that the three fit the
    model's maximum length, and the prefix and suffix are kept whole. "text_pair" (BERT-family
    cross-encoders): query and document go to the tokenizer as a pair (its own special tokens and
    token type ids), truncated longest first; prefix, template and suffix are unused.
    """

    encoding: str = "text_pair"  # "template" | "text_pair"
    prefix: str = ""
    template: str = ""  # with {instruction}, {query}, {document}
    suffix: str = ""
    default_instruction: str | None = None

    def __post_init__(self) -> None:
        if self.encoding not in ("template", "text_pair"):
            raise ArtefactError(f"unknown pair encoding {self.encoding!r} (template, text_pair); re-export the model")
        if self.encoding == "template" and not all(p in self.template for p in (QUERY, DOCUMENT)):
            raise ArtefactError(f"the pair template {self.template!r} needs {QUERY} and {DOCUMENT}; re-export")

    @property
    def takes_instruction(self) -> bool:
        return INSTRUCTION in self.template

    def check_instruction(self, instruction: str | None) -> None:
        """The same instruction rule as for queries (``Prompts.check_instruction``): refused where the
        template has no place for one (a text-pair cross-encoder has none), required where it needs one."""
        if instruction is not None and not self.takes_instruction:
            raise InvalidFieldError("instruction", "this reranker takes no instruction; leave it out")
        if self.takes_instruction and not (instruction or self.default_instruction):
            raise InvalidFieldError("instruction", "this reranker needs an instruction and has no default; "
                                    "pass a non-empty one")

    def format_pair(self, query: str, document: str, instruction: str | None = None) -> str:
        """The truncatable middle of a "template" input; ``check_instruction``'s rule applies."""
        self.check_instruction(instruction)
        return _fill(self.template, {QUERY: query, DOCUMENT: document,
                                     INSTRUCTION: instruction or self.default_instruction or ""})


def _fill(template: str, values: dict[str, str]) -> str:
    """One pass over ``template``: a placeholder inside a filled-in value is text, not a placeholder."""
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(0), m.group(0)), template)
