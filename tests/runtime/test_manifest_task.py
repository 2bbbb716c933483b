"""The model's task is data in the manifest: embed or rerank, with what a reranker needs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from embedrt import Embedder
from embedrt.errors import ArtefactError, InvalidFieldError
from embedrt.manifest import MANIFEST_NAME, load_manifest
from embedrt.prompts import PairPrompt

QWEN3_RERANK = PairPrompt(encoding="template", prefix="<sys>", suffix="<end>",
                          template="<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}",
                          default_instruction="Given a web search query, retrieve relevant passages")
RERANK = {"prompt": QWEN3_RERANK.__dict__, "activation": "sigmoid", "label_token_ids": {"yes": 5, "no": 6}}
RERANK_OUTPUTS = [{"name": "score", "dtype": "float32", "shape": ["batch"]},
                  {"name": "logit", "dtype": "float32", "shape": ["batch"]}]


def _rewrite(src: Path, dst: Path, **changes: Any) -> Path:
    shutil.copytree(src, dst)
    data = json.loads((dst / MANIFEST_NAME).read_text())
    data.update(changes)
    (dst / MANIFEST_NAME).write_text(json.dumps(data))
    return dst


def test_pair_prompt_fills_the_middle_and_applies_the_instruction_rule() -> None:
    assert QWEN3_RERANK.format_pair("q", "d", "Find") == "<Instruct>: Find\n<Query>: q\n<Document>: d"
    assert QWEN3_RERANK.format_pair("{document}", "d") == (
        "<Instruct>: Given a web search query, retrieve relevant passages\n<Query>: {document}\n<Document>: d")
    no_instruction = PairPrompt(encoding="template", template="{query} | {document}")
    with pytest.raises(InvalidFieldError, match="takes no instruction"):
        no_instruction.format_pair("q", "d", "Find")
    with pytest.raises(ArtefactError, match="needs"):
        PairPrompt(encoding="template", template="{query} only")
    with pytest.raises(ArtefactError, match="unknown pair encoding"):
        PairPrompt(encoding="words")


def test_a_version_1_manifest_is_an_embedder(qwen3_artefact: Path, tmp_path: Path) -> None:
    old = _rewrite(qwen3_artefact, tmp_path / "old", schema_version=1)
    manifest = load_manifest(old)
    assert manifest.task == "embed" and manifest.rerank is None
    assert manifest.input_names == ("input_ids", "attention_mask")
    assert manifest.output_names[:2] == ("sentence_embedding", "embedding_norm")


def test_a_rerank_manifest_reads_its_spec_and_the_embedder_refuses_it(qwen3_artefact: Path, tmp_path: Path) -> None:
    art = _rewrite(qwen3_artefact, tmp_path / "rr", task="rerank", rerank=RERANK, outputs=RERANK_OUTPUTS)
    manifest = load_manifest(art)
    assert manifest.task == "rerank" and manifest.rerank is not None
    assert manifest.rerank.prompt == QWEN3_RERANK and manifest.rerank.label_token_ids == {"yes": 5, "no": 6}
    with pytest.raises(ArtefactError, match=r"rerank model.*Reranker\.load"):
        Embedder.load(art)


@pytest.mark.parametrize(("changes", "match"), [
    ({"task": "classify"}, "unknown task 'classify'"),
    ({"task": "rerank"}, "needs its rerank section"),
    ({"task": "rerank", "rerank": RERANK}, "must output score, logit"),
    ({"rerank": RERANK}, "only a rerank manifest"),
    ({"task": "rerank", "outputs": RERANK_OUTPUTS, "rerank": {**RERANK, "activation": "tanh"}}, "activation"),
    ({"schema_version": 3}, "reads 1, 2"),
])
def test_a_manifest_whose_task_cannot_run_is_refused(qwen3_artefact: Path, tmp_path: Path,
                                                     changes: dict[str, Any], match: str) -> None:
    with pytest.raises(ArtefactError, match=match):
        load_manifest(_rewrite(qwen3_artefact, tmp_path / "bad", **changes))
