"""The export's parity pairs are encoded exactly as the runtime encodes a user's pairs.

The export measures parity on inputs from its own ``PairEncoder`` (checked at export against each
model card's tokenization); the runtime serves with ``embedrt.pairs.PairTokenizer``. If the two ever
drifted apart, the export would vouch for inputs the runtime never builds: this test pins them together.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embedrt.manifest import load_manifest
from embedrt.pairs import PairTokenizer
from embedrt_export.export.rerank_reference import Pair, PairEncoder

LONG = "Paris is the capital and largest city of France. " * 40  # over any fixture's max length
PAIRS = [
    ("what is rope?", "Rotary position embeddings rotate query and key vectors."),
    ("capital of France", LONG),
    (LONG, "a short document"),
    ("", "an empty query side"),
    ("Emoji 🙂 and 敏捷的棕色狐狸", "Быстрая коричневая лиса 🚀 {query} {document} braces stay text"),
]


@pytest.mark.parametrize("fixture", ["qwen3_reranker_artefact", "cross_encoder_artefact"])
def test_export_and_runtime_encode_pairs_alike(fixture: str, request: pytest.FixtureRequest) -> None:
    artefact: Path = request.getfixturevalue(fixture)
    manifest = load_manifest(artefact)
    assert manifest.rerank is not None
    runtime = PairTokenizer(artefact, manifest)
    export = PairEncoder(artefact / "tokenizer.json", manifest.rerank.prompt, manifest.max_length,
                         manifest.pad_token_id, "token_type_ids" in manifest.input_names)
    served = runtime.encode(PAIRS)
    assert any(e.truncated for e in served)  # the long pairs really are cut
    for i, (query, document) in enumerate(PAIRS):
        ids, types = export.encode(Pair(query, document))
        np.testing.assert_array_equal(served[i].ids, ids, err_msg=f"pair {i}")
        if served[i].type_ids is not None:
            np.testing.assert_array_equal(served[i].type_ids, types, err_msg=f"pair {i} token types")
        assert len(ids) <= manifest.max_length
