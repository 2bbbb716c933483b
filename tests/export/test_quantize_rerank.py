"""``embedrt quantize`` on rerankers: the same two INT8 graphs, behind a ranking gate (quantize/ranking.py).

On the tiny random Qwen3-Reranker (template pairs, an instruction) and BERT cross-encoder (text pairs,
token type ids, a pooler and classifier as Gemm), quantized once per session on a few query lists
(tests/export/conftest.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from quantize_helpers import RERANK_QUICK, _copy, _snapshot

from embedrt import Reranker
from embedrt.cli import main
from embedrt.config import BackendConfig
from embedrt.manifest import load_manifest
from embedrt_export import QuantizeOptions, quantize_artefact
from embedrt_export.errors import QuantizationError
from embedrt_export.export.source import file_sha256
from embedrt_export.quantize import calibration
from embedrt_export.quantize.ranking import ranks, spearman, top_agreement

RANKING_KEYS = {"mean_spearman", "min_spearman", "top_3_agreement", "max_abs_score_diff", "mean_abs_score_diff",
                "max_abs_logit_diff", "mean_abs_logit_diff", "gate_mean_spearman", "passed", "lists", "pairs"}
# The tiny random rerankers' logits differ by tenths between documents, so INT8's noise moves rankings more
# than it would on a trained model; measured on the shipped held-out lists: docs/int8.md, "Rerankers".
SCORE_TOLERANCE = 0.06  # max |Δscore| of the int8-cpu graph vs FP32 through the runtime


@pytest.fixture(params=["qwen3_reranker_int8", "cross_encoder_int8"])
def rerank_int8(request: pytest.FixtureRequest) -> Path:
    return request.getfixturevalue(request.param)


def test_both_graphs_recorded_with_their_ranking_report(rerank_int8: Path) -> None:
    m = load_manifest(rerank_int8)
    for key in ("int8", "int8-cpu"):
        graph = m.graphs[key]
        report = graph.parity
        assert RANKING_KEYS <= set(report) and "mean_cosine" not in report
        assert report["passed"] and report["mean_spearman"] >= report["gate_mean_spearman"] == 0.95
        lists = RERANK_QUICK["limit_heldout"]
        assert report["lists"] + report["unranked_lists"] == lists and report["pairs"] == 10 * lists
        assert report["ranked_by"] == "logit" and report["max_abs_score_diff"] < 0.1
        for name in (graph.file, *graph.external_data):
            assert m.files[name] == file_sha256(rerank_int8 / name)
        assert graph.attention == m.graphs["fp32"].attention
    calib = RERANK_QUICK["limit_calibration"]
    assert m.graphs["int8"].quantization["calibration"] == {  # 4 documents a calibration list
        "source": "shipped:rerank_calibration.jsonl", "lists": calib, "pairs": 4 * calib, "batch_size": 8}
    assert m.graphs["int8-cpu"].quantization["integer_ops"]
    assert not list(rerank_int8.glob(".quantize-*"))


def test_cross_encoder_head_stays_float_on_cpu_only(cross_encoder_int8: Path) -> None:
    """The pooler and classifier are Gemm: the Q/DQ graph quantizes them, the CPU quantizer (MatMul only)
    keeps them float, which the CPU graph's record says."""
    m = load_manifest(cross_encoder_int8)
    cpu = m.graphs["int8-cpu"].quantization
    float_on_cpu = [n for n, why in cpu["excluded_nodes"].items() if why.startswith("int8-cpu: not a MatMul")]
    assert len(float_on_cpu) == 2
    assert not set(float_on_cpu) & set(m.graphs["int8"].quantization["excluded_nodes"])  # INT8 in the Q/DQ graph


def test_reranker_runs_int8_close_to_fp32(rerank_int8: Path) -> None:
    query = "what is the capital of France?"
    docs = ["Paris is the capital and largest city of France.", "The quick brown fox jumps over the lazy dog.",
            "Berlin is the capital of Germany.", "def add(a, b):\n    return a + b", "Lyon is a city in France."]
    cpu = BackendConfig(device="cpu")
    with Reranker.load(rerank_int8, precision="auto", backend_config=cpu) as ref:
        assert ref.precision == "fp32"  # auto on CPU: FP32, as for embedders
        want = ref.score([(query, d) for d in docs])
    # "int8" on CPU loads the u8s8 graph; "int8-cpu" asks for it by key.
    for precision in ("int8", "int8-cpu"):
        with Reranker.load(rerank_int8, precision=precision, backend_config=cpu) as reranker:
            assert reranker.precision == "int8-cpu"
            got = reranker.score([(query, d) for d in docs])
            ranked = reranker.rerank(query, docs)
        assert np.max(np.abs(got - want)) < SCORE_TOLERANCE
        assert [r.index for r in ranked] == list(np.argsort(-got, kind="stable"))


@pytest.mark.trt
def test_int8_graph_builds_ahead_of_time(rerank_int8: Path, tmp_path: Path) -> None:
    """TensorRT-RTX parses and builds the Q/DQ graph (as INT8 + FP16, a cross-encoder's token_type_ids and
    Gemm head included); no GPU: the engine check against ONNX Runtime is skipped ahead of time."""
    trt = pytest.importorskip("tensorrt_rtx_bindings",
                              reason="TensorRT-RTX is not installed: pip install 'embedrt-export[tensorrt-rtx]'")
    from embedrt_export.trt import BuildOptions, build_engines

    artefact = _copy(rerank_int8, tmp_path / "a")
    (record,) = build_engines(artefact, BuildOptions(("int8",), ("89",), "tensorrt-rtx"), log=lambda _: None)
    assert str(record.key) == f"tensorrt-rtx-{trt.__version__}-sm89-int8" and record.build["int8_float"] == "fp16"
    assert record.parity is None and record.plan_bytes > 0


def test_unreachable_gate_fails_through_the_cli_and_changes_nothing(qwen3_reranker_int8: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    # From an artefact that has INT8 graphs already: a failed run keeps them as they are. A gate above 1 is
    # out of reach of any exclusion (FP32 against itself scores 1), so the search is skipped.
    out = _copy(qwen3_reranker_int8, tmp_path / "a")
    before = _snapshot(out)
    assert main(["quantize", str(out), "--gate", "1.01", "--target", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "int8-cpu graph misses the quality gate: mean Spearman" in err and "< 1.01" in err
    assert "the artefact is unchanged" in err
    assert _snapshot(out) == before


def test_custom_query_lists_are_recorded(qwen3_reranker_artefact: Path, tmp_path: Path) -> None:
    out = _copy(qwen3_reranker_artefact, tmp_path / "a")
    mine = tmp_path / "mine.jsonl"
    lists = [{"query": f"question {i}", "documents": [f"answer {i}", "something else"], "instruction": "Find it"}
             for i in range(3)]
    mine.write_text("\n".join(json.dumps(x) for x in lists) + "\n", encoding="utf-8")
    quantize_artefact(out, QuantizeOptions(calibration=mine, cpu_variant=False, limit_heldout=8, show_progress=False),
                      log=lambda _: None)
    graph = load_manifest(out).graphs["int8"]
    assert graph.quantization["calibration"] == {"source": str(mine), "lists": 3, "pairs": 6, "batch_size": 8}
    assert graph.parity["passed"] and "int8-cpu" not in load_manifest(out).graphs
    with pytest.raises(QuantizationError, match="a reranker calibrates on query lists"):
        quantize_artefact(out, QuantizeOptions(calibration=tmp_path / "texts.txt"), log=lambda _: None)


def test_calibration_pairs_are_the_runtime_inputs(qwen3_reranker_artefact: Path, cross_encoder_artefact: Path) -> None:
    """Calibration and the gate feed the graph exactly what Reranker.prepare makes of the same pairs."""
    lists = calibration.load_lists(calibration.SHIPPED_LISTS["heldout"])[:3]
    for artefact in (qwen3_reranker_artefact, cross_encoder_artefact):
        m = load_manifest(artefact)
        feeds, order = calibration.pair_feeds(artefact, m, lists, batch_size=4)
        rows = [(feed, r) for feed in feeds for r in range(len(feed["input_ids"]))]
        with Reranker.load(artefact, backend_config=BackendConfig(device="cpu")) as reranker:
            takes = m.rerank is not None and m.rerank.prompt.takes_instruction
            want = [item for q in lists for item in reranker.prepare(
                [(q.query, d) for d in q.documents], instruction=q.instruction if takes else None)]
        for (feed, r), pair in zip(rows, order, strict=True):
            mask = feed["attention_mask"][r].astype(bool)
            assert feed["input_ids"][r][mask].tolist() == want[pair].ids.tolist()
            if "token_type_ids" in feed:
                assert feed["token_type_ids"][r][mask].tolist() == want[pair].type_ids.tolist()  # type: ignore[union-attr]
            assert mask.tolist() == sorted(mask.tolist(), reverse=m.padding_side == "right")  # the manifest's side


def test_shipped_query_lists_are_disjoint_and_mixed() -> None:
    calib = calibration.load_lists(calibration.SHIPPED_LISTS["calibration"])
    held = calibration.load_lists(calibration.SHIPPED_LISTS["heldout"])
    assert len(held) >= 50 and all(len(q.documents) == 10 for q in held) and len(calib) >= 70

    def texts(lists: list[calibration.QueryList]) -> set[str]:
        return {q.query for q in lists} | {d for q in lists for d in q.documents}

    assert not texts(calib) & texts(held)
    assert all(q.instruction for q in calib + held)
    related = [json.loads(line)["related"] for line in calibration.SHIPPED_LISTS["heldout"].read_text().splitlines()]
    assert all(1 <= len(r) <= 3 for r in related)  # some on the query's subject, most not
    assert sum(p.stat().st_size for p in calibration.SHIPPED_LISTS.values()) < 350_000


def test_ranking_metrics() -> None:
    assert ranks(np.array([3.0, 1.0, 2.0, 1.0])).tolist() == [4.0, 1.5, 3.0, 1.5]  # ties share their mean rank
    a = np.array([0.1, 0.5, 0.3, 0.9])
    assert spearman(a, a * 2 + 1) == pytest.approx(1.0) and spearman(a, -a) == pytest.approx(-1.0)
    assert spearman(a, np.array([0.1, 0.3, 0.5, 0.9])) == pytest.approx(0.8)  # one neighbour swap of 4: 1 - 6*2/60
    assert spearman(a, np.zeros(4)) == 0.0 and np.isnan(spearman(np.zeros(4), a))  # FP32 ties all: no order
    assert top_agreement(a, a) == 1.0 and top_agreement(a, np.array([0.9, 0.5, 0.3, 0.1])) == pytest.approx(2 / 3)
    assert top_agreement(a[:2], a[:2][::-1]) == 1.0  # k at most the list


def test_query_list_files(tmp_path: Path) -> None:
    good = tmp_path / "l.jsonl"
    good.write_text(json.dumps({"query": "q", "documents": ["a", "b"]}) + "\n", encoding="utf-8")
    assert calibration.load_lists(good) == [calibration.QueryList("q", ("a", "b"))]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"query": "q", "documents": []}) + "\n", encoding="utf-8")
    with pytest.raises(QuantizationError, match=r"bad\.jsonl:1 needs a \"query\" string and a non-empty"):
        calibration.load_lists(bad)
    with pytest.raises(QuantizationError, match=r"not texts\.txt"):
        calibration.load_lists(tmp_path / "texts.txt")
