"""Regenerates the shipped text sets (calibration.jsonl, heldout.jsonl) and the reranker's query lists
made from them (rerank_calibration.jsonl, rerank_heldout.jsonl): python scripts/make_text_sets.py.

The texts are written for this repository: short facts on many topics in several languages, code
snippets, and search queries about them. Documents are random combinations of a topic's sentences
(1 to 12 of them, so lengths spread from a few tokens to a few hundred); queries are stored raw with
a task and formatted with the artefact's own query template when used. The held-out set draws its
English documents and queries from topics the calibration set never sees. Deterministic. The files
are written where embedrt-export loads them from (``embedrt_export/quantize/data/``).

A reranker's sets are query lists: each query of a text set with documents of the same set, some on
its subject (its topic; its language, for the multilingual texts; its own snippet, for code) and the
rest from other subjects, shuffled. Lists draw only on their own text set, so the reranker's held-out
pairs share no text with its calibration pairs either.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from text_corpus import CODE, MULTILINGUAL, TASKS, TOPICS

DATA = Path(__file__).resolve().parents[1] / "export" / "src" / "embedrt_export" / "quantize" / "data"


def _document(rng: random.Random, sentences: list[str], joiner: str = " ") -> str:
    k = rng.choice([1, 1, 2, 2, 3, 4, 6, 8, 12])
    picked = [rng.choice(sentences) for _ in range(k)] if k > len(sentences) else rng.sample(sentences, k)
    return joiner.join(picked)


def _records(rng: random.Random, topics: dict[str, dict[str, list[str]]], docs_per_topic: int,
             queries_per_topic: int) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for topic, body in topics.items():
        for _ in range(docs_per_topic):
            out.append({"kind": "document", "lang": "en", "topic": topic, "text": _document(rng, body["facts"])})
        for query in rng.sample(body["queries"], min(queries_per_topic, len(body["queries"]))):
            out.append({"kind": "query", "lang": "en", "topic": topic, "task": rng.choice(TASKS), "text": query})
    return out


def _multilingual(rng: random.Random, docs: int, queries: int) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for lang, body in MULTILINGUAL.items():
        joiner = "" if lang in ("zh", "ja") else " "
        for _ in range(docs):
            out.append({"kind": "document", "lang": lang, "text": _document(rng, body["facts"], joiner)})
        for query in rng.sample(body["queries"], min(queries, len(body["queries"]))):
            out.append({"kind": "query", "lang": lang, "task": rng.choice(TASKS), "text": query})
    return out


def _code(rng: random.Random, snippets: list[tuple[str, str]]) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for query, code in snippets:
        out.append({"kind": "document", "lang": "code", "text": code})
        out.append({"kind": "query", "lang": "code", "task": TASKS[-1], "text": query})
    return out


def build() -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    names = sorted(TOPICS)
    held_topics = set(names[::3])  # every third topic is held out entirely
    calib_rng, held_rng = random.Random(1), random.Random(2)
    calibration = _records(calib_rng, {t: TOPICS[t] for t in names if t not in held_topics}, 10, 3)
    calibration += _multilingual(calib_rng, 14, 3)
    calibration += _code(calib_rng, CODE[::2])
    heldout = _records(held_rng, {t: TOPICS[t] for t in names if t in held_topics}, 8, 3)
    heldout += _multilingual(held_rng, 6, 2)
    heldout += _code(held_rng, CODE[1::2])
    calib_rng.shuffle(calibration)
    held_rng.shuffle(heldout)
    heldout = _unique(heldout, set())
    calibration = _unique(calibration, {r["text"] for r in heldout})
    return calibration, heldout


def _unique(records: list[dict[str, str]], taken: set[str]) -> list[dict[str, str]]:
    out = []
    for record in records:
        if record["text"] not in taken:
            taken.add(record["text"])
            out.append(record)
    return out


# Documents per query list, and how many of them (at most) on the query's subject: held-out lists are
# long enough for a ranking to mean something; calibration lists only need related and unrelated pairs.
RERANK_LISTS = {"rerank_calibration.jsonl": ("calibration", 4, 2), "rerank_heldout.jsonl": ("heldout", 10, 3)}


def query_lists(records: list[dict[str, str]], size: int, related: int, rng: random.Random) -> list[dict[str, object]]:
    """Each query of ``records`` with ``size`` of its documents: up to ``related`` on its subject, the rest
    not, shuffled; ``related`` in the record lists the indices of the former."""
    docs = [r for r in records if r["kind"] == "document"]
    snippet = dict(CODE)

    def near(query: dict[str, str], doc: dict[str, str]) -> bool:
        if query["lang"] == "code":
            return doc["text"] == snippet[query["text"]]
        return doc["lang"] == query["lang"] and doc.get("topic") == query.get("topic")

    out: list[dict[str, object]] = []
    for query in (r for r in records if r["kind"] == "query"):
        close = [d["text"] for d in docs if near(query, d)]
        far = [d["text"] for d in docs if not near(query, d)]
        picked = rng.sample(close, min(related, len(close)))
        chosen = [(text, True) for text in picked] + [(text, False) for text in rng.sample(far, size - len(picked))]
        rng.shuffle(chosen)
        out.append({"lang": query["lang"], "instruction": query["task"], "query": query["text"],
                    "documents": [text for text, _ in chosen], "related": [i for i, (_, r) in enumerate(chosen) if r]})
    return out


def _write(name: str, records: list[dict[str, object]], unit: str) -> None:
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    (DATA / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"{name}: {len(records)} {unit}, {sum(len(x) for x in lines) // 1024} KiB")


def main() -> None:
    calibration, heldout = build()
    sets = {"calibration": calibration, "heldout": heldout}
    for name, records in sets.items():
        _write(f"{name}.jsonl", records, "texts")  # type: ignore[arg-type]
    for seed, (name, (source, size, related)) in enumerate(RERANK_LISTS.items(), 3):
        _write(name, query_lists(sets[source], size, related, random.Random(seed)), "query lists")


if __name__ == "__main__":
    main()
