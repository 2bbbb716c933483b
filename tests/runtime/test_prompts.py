"""One rule for instructions and templates (embedrt.prompts), and manifests written with earlier names."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from embedrt import Embedder
from embedrt.errors import ArtefactError, InvalidFieldError
from embedrt.manifest import MANIFEST_NAME, load_manifest
from embedrt.prompts import Prompts

QWEN3 = Prompts(query="Instruct: {instruction}\nQuery:{text}", default_instruction="Find passages")


def test_query_formatting_fills_the_instruction_or_the_default() -> None:
    assert QWEN3.format_query("rope", "Find papers") == "Instruct: Find papers\nQuery:rope"
    assert QWEN3.format_query("rope") == QWEN3.format_query("rope", "") == "Instruct: Find passages\nQuery:rope"
    assert QWEN3.format_document("rope") == "rope"
    assert QWEN3.takes_instruction and not Prompts().takes_instruction
    # Braces in the text or the instruction are text, never placeholders.
    assert QWEN3.format_query("{instruction}", "{text}") == "Instruct: {text}\nQuery:{instruction}"


@pytest.mark.parametrize(("prompts", "instruction", "match"), [
    (Prompts(), "Find things", "takes no instruction"),
    (Prompts(), "", "takes no instruction"),
    (Prompts(query="{instruction}: {text}"), None, "needs an instruction"),
    (Prompts(query="{instruction}: {text}"), "", "needs an instruction"),
])
def test_instruction_problems_name_the_field(prompts: Prompts, instruction: str | None, match: str) -> None:
    with pytest.raises(InvalidFieldError, match=match) as info:
        prompts.format_query("x", instruction)
    assert info.value.field == "instruction" and prompts.query in str(info.value)


@pytest.mark.parametrize("bad", [{"query": "no text here"}, {"document": "{instruction} {text}"}, {"query": 3}])
def test_a_template_that_cannot_work_is_an_artefact_error(bad: dict[str, object]) -> None:
    with pytest.raises(ArtefactError, match="re-export"):
        Prompts(**bad)  # type: ignore[arg-type]


def test_a_manifest_with_the_earlier_names_reads_the_same(qwen3_artefact: Path, tmp_path: Path) -> None:
    """Artefacts exported before the name was settled say ``{task}`` and ``default_task``."""
    old = tmp_path / "old"
    shutil.copytree(qwen3_artefact, old)
    data = json.loads((old / MANIFEST_NAME).read_text())
    new_prompts = dict(data["prompts"])
    data["prompts"] = {"query": new_prompts["query"].replace("{instruction}", "{task}"),
                       "document": new_prompts["document"], "default_task": new_prompts["default_instruction"]}
    (old / MANIFEST_NAME).write_text(json.dumps(data))
    assert load_manifest(old).prompts == load_manifest(qwen3_artefact).prompts
    with Embedder.load(old) as before, Embedder.load(qwen3_artefact) as now:
        assert (before.embed_queries(["rope"]) == now.embed_queries(["rope"])).all()
