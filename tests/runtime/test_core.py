"""The scheduler's batching and admission logic, against a fake with the Embedder's three verbs (and,
for the reranking head, a fake with the Reranker's ranking verbs).

The fake makes timing controllable (a gate holds the backend) and records every backend call; the
end-to-end tests in this folder and in tests/server run the same paths on the real models.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import CancelledError

import numpy as np
import pytest

from embedrt.config import SchedulerConfig
from embedrt.core import EmbedRequest, RerankRequest, RerankScheduler, Scheduler
from embedrt.errors import (
    BackendError,
    DeadlineExceededError,
    InputTooLongError,
    InvalidFieldError,
    InvalidInputError,
    OverloadedError,
    UnavailableError,
)
from embedrt.manifest import RerankSpec
from embedrt.pooling import check_dimensions, finish
from embedrt.prompts import PairPrompt, Prompts
from embedrt.reranker import RankingInput
from embedrt.scoring import RerankResult, best_windows, check_top_n, rank
from embedrt.tokenizer import Encoded, validate_texts

HIDDEN = 8


class FakeEmbedder:
    """Texts of n words become n tokens; a vector depends on the text only, never on its batch."""

    def __init__(self) -> None:
        self.batches: list[int] = []  # texts per infer() call
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.fail_next = False

    def prepare(self, texts: Sequence[str], *, instruction: str | None = None,
                truncate: bool = True) -> list[Encoded]:
        out = []
        for i, text in enumerate(validate_texts(texts)):  # as Embedder.prepare does
            words = text.split()
            if not truncate and len(words) > 16:
                raise InvalidInputError(f"input {i} is too long")
            out.append(Encoded(np.array([hash(w) % 1000 for w in words[:16]] or [0], dtype=np.int64)))
        return out

    def infer(self, items: Sequence[Encoded]) -> tuple[np.ndarray, np.ndarray]:
        self.entered.set()
        self.gate.wait(10)
        self.batches.append(len(items))
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("injected failure")
        raw = np.stack([np.cos(np.arange(1, HIDDEN + 1) * (1 + e.ids.sum() % 97)) for e in items]).astype(np.float32)
        norms = np.linalg.norm(raw, axis=1)
        return raw / norms[:, None], norms

    def finish(self, vectors: np.ndarray, norms: np.ndarray, *, dimensions: int | None = None,
               normalize: bool = True) -> np.ndarray:
        return finish(vectors, norms, check_dimensions(dimensions, (4, HIDDEN)), normalize)


def make(fake: FakeEmbedder, **config: int) -> Scheduler:
    return Scheduler(fake, SchedulerConfig(**config), dimensions_range=(4, HIDDEN))


def req(*texts: str, **options: object) -> EmbedRequest:
    return EmbedRequest(texts=texts, **options)  # type: ignore[arg-type]


def test_concurrent_requests_share_batches_and_keep_their_results() -> None:
    fake = FakeEmbedder()
    with_batching = make(fake, max_wait_us=50_000)
    texts = [f"text number {i} " * (1 + i % 3) for i in range(40)]
    alone = [make(FakeEmbedder(), max_batch_requests=1)]
    try:
        futures = [with_batching.submit(req(t)) for t in texts]
        merged = [f.result(5).vectors for f in futures]
        singles = [alone[0].submit(req(t)).result(5).vectors for t in texts]
    finally:
        with_batching.close()
        alone[0].close()
    assert len(fake.batches) <= 4, fake.batches
    for a, b in zip(merged, singles, strict=True):
        np.testing.assert_array_equal(a, b)


def test_token_budget_and_request_cap_bound_each_batch() -> None:
    fake = FakeEmbedder()
    fake.gate.clear()
    scheduler = make(fake, max_wait_us=0, max_batch_tokens=10, max_batch_requests=3)
    try:
        first = scheduler.submit(req("w"))
        assert fake.entered.wait(5)
        futures = [scheduler.submit(req("a b c d")) for _ in range(6)]  # 4 tokens each
        futures.append(scheduler.submit(req(" ".join(["x"] * 15))))  # over budget alone: runs alone
        time.sleep(0.2)
        fake.gate.set()
        for f in [first, *futures]:
            f.result(5)
    finally:
        scheduler.close()
    assert fake.batches == [1, 2, 2, 2, 1]


def test_requests_past_the_queue_bound_are_refused_at_once() -> None:
    fake = FakeEmbedder()
    fake.gate.clear()
    scheduler = make(fake, max_queued_requests=3)
    try:
        admitted = [scheduler.submit(req("a")) for _ in range(3)]
        started = time.monotonic()
        with pytest.raises(OverloadedError, match="limit is 3"):
            scheduler.submit(req("b"))
        assert time.monotonic() - started < 0.1
        fake.gate.set()
        for f in admitted:
            f.result(5)
        scheduler.submit(req("c")).result(5)  # room again once answered
    finally:
        scheduler.close()


def test_queued_tokens_are_bounded_too() -> None:
    fake = FakeEmbedder()
    fake.gate.clear()
    scheduler = make(fake, max_queued_tokens=8, max_wait_us=0)
    try:
        running = scheduler.submit(req("x"))
        assert fake.entered.wait(5)
        queued = scheduler.submit(req("a b c d e f"))  # 6 tokens wait
        refused = scheduler.submit(req("a b c d"))  # would make 10 > 8
        with pytest.raises(OverloadedError, match="tokens are already waiting"):
            refused.result(5)
        fake.gate.set()
        running.result(5)
        queued.result(5)
    finally:
        scheduler.close()


def test_cancelled_and_expired_requests_never_reach_the_backend() -> None:
    fake = FakeEmbedder()
    fake.gate.clear()
    scheduler = make(fake, max_wait_us=0)
    try:
        running = scheduler.submit(req("first"))
        assert fake.entered.wait(5)
        cancelled = scheduler.submit(req("a", "b", "c"))
        expired = scheduler.submit(req("d", deadline=time.monotonic() + 0.05))
        kept = scheduler.submit(req("e", "f"))
        time.sleep(0.1)  # let both be tokenized and queued, and the deadline pass
        assert cancelled.cancel()
        fake.gate.set()
        running.result(5)
        assert kept.result(5).vectors.shape == (2, HIDDEN)
        with pytest.raises(CancelledError):
            cancelled.result(5)
        with pytest.raises(DeadlineExceededError):
            expired.result(5)
    finally:
        scheduler.close()
    assert fake.batches == [1, 2]  # only "first", then "e", "f"


def test_a_backend_failure_fails_only_its_batch() -> None:
    fake = FakeEmbedder()
    scheduler = make(fake, max_wait_us=0)
    try:
        fake.fail_next = True
        with pytest.raises(BackendError, match="injected failure"):
            scheduler.submit(req("a")).result(5)
        assert scheduler.submit(req("b")).result(5).vectors.shape == (1, HIDDEN)
    finally:
        scheduler.close()


def test_validation_names_the_field() -> None:
    scheduler = make(FakeEmbedder(), max_inputs_per_request=2)
    try:
        cases = {"inputs": req(), "dimensions": req("a", dimensions=99)}
        for field, bad in cases.items():
            with pytest.raises(InvalidFieldError) as info:
                scheduler.submit(bad)
            assert info.value.field == field
        with pytest.raises(InvalidFieldError, match="limit of 2"):
            scheduler.submit(req("a", "b", "c"))
        with pytest.raises(InvalidFieldError, match="UTF-8") as info:  # checked off the caller's thread
            scheduler.submit(req("ok", "bad \udc80")).result(5)
        assert info.value.field == "inputs[1]"
        with pytest.raises(InvalidFieldError) as info:
            scheduler.submit(req("short", " ".join(["w"] * 20), truncate=False)).result(5)
        assert info.value.field == "inputs"
    finally:
        scheduler.close()


def test_instruction_errors_name_the_field_not_a_python_call() -> None:
    plain = Scheduler(FakeEmbedder(), dimensions_range=(4, HIDDEN), prompts=Prompts(query="query: {text}"))
    needs_task = Scheduler(FakeEmbedder(), dimensions_range=(4, HIDDEN), prompts=Prompts(query="{instruction}: {text}"))
    try:
        for scheduler, request in ((plain, req("a", instruction="a task")), (needs_task, req("a", query=True))):
            with pytest.raises(InvalidFieldError) as info:
                scheduler.submit(request)
            assert info.value.field == "instruction" and "embed_queries" not in str(info.value)
        assert plain.submit(req("a", query=True)).result(5).vectors.shape == (1, HIDDEN)
    finally:
        plain.close()
        needs_task.close()


def test_options_apply_per_request_within_a_shared_batch() -> None:
    fake = FakeEmbedder()
    scheduler = make(fake, max_wait_us=50_000)
    try:
        full = scheduler.submit(req("same text"))
        cut = scheduler.submit(req("same text", dimensions=4))
        raw = scheduler.submit(req("same text", normalize=False))
        full_v, cut_v, raw_v = full.result(5).vectors, cut.result(5).vectors, raw.result(5).vectors
    finally:
        scheduler.close()
    assert fake.batches == [3]
    assert cut_v.shape == (1, 4)
    np.testing.assert_allclose(np.linalg.norm(cut_v), 1.0, rtol=1e-6)
    np.testing.assert_allclose(raw_v / np.linalg.norm(raw_v), full_v, rtol=1e-6)


def test_drain_finishes_admitted_work_and_refuses_new() -> None:
    fake = FakeEmbedder()
    fake.gate.clear()
    scheduler = make(fake, max_wait_us=1_000_000)  # drain must not wait out the batching delay
    try:
        admitted = [scheduler.submit(req(f"t{i}")) for i in range(5)]
        done = threading.Event()
        threading.Thread(target=lambda: scheduler.drain(10) and done.set()).start()
        time.sleep(0.05)
        with pytest.raises(UnavailableError):
            scheduler.submit(req("late"))
        fake.gate.set()
        assert done.wait(5)
        assert all(f.result(0).vectors.shape == (1, HIDDEN) for f in admitted)
    finally:
        scheduler.close()


def test_close_fails_what_is_left() -> None:
    fake = FakeEmbedder()
    fake.gate.clear()
    scheduler = make(fake, max_wait_us=0)
    running = scheduler.submit(req("a"))
    assert fake.entered.wait(5)
    waiting = scheduler.submit(req("b"))
    time.sleep(0.05)
    threading.Timer(0.2, fake.gate.set).start()
    scheduler.close(timeout=0.1)
    with pytest.raises(UnavailableError):
        waiting.result(5)
    fake.gate.set()
    running.exception(5)  # settled one way or the other, never left hanging


# -- the same core with the reranking head ---------------------------------------------------------


class FakeReranker:
    """Pairs of n words become n tokens; a pair's logit depends on the pair only, never on its batch."""

    spec = RerankSpec(PairPrompt())  # a text-pair cross-encoder's: no instruction

    def __init__(self) -> None:
        self.batches: list[int] = []  # pairs per infer() call

    def prepare_ranking(self, query: str, documents: Sequence[str], *, instruction: str | None = None,
                        top_n: int | None = None, long_documents: str = "truncate",
                        truncate: bool = True, max_pairs: int | None = None) -> RankingInput:
        count = check_top_n(top_n, len(documents))
        items = []
        for i, document in enumerate(documents):
            words = (query + " " + document).split()
            if not truncate and len(words) > 16:
                raise InputTooLongError(i, len(words), 16, what="pair")
            items.append(Encoded(np.array([hash(w) % 1000 for w in words[:16]], dtype=np.int64)))
        return RankingInput(items, np.arange(len(documents)), len(documents), count)

    def infer(self, items: Sequence[Encoded]) -> tuple[np.ndarray, np.ndarray]:
        self.batches.append(len(items))
        logits = np.array([np.sin(float(e.ids.sum())) * 4 for e in items], dtype=np.float32)
        return 1 / (1 + np.exp(-logits)), logits

    def finish_ranking(self, scores: np.ndarray, logits: np.ndarray, ranking: RankingInput) -> list[RerankResult]:
        best = best_windows(logits, ranking.owners, ranking.documents)
        return rank(scores[best], logits[best], ranking.top_n)


def rerank_req(query: str, *documents: str, **options: object) -> RerankRequest:
    return RerankRequest(query, documents, **options)  # type: ignore[arg-type]


def test_rerank_requests_share_batches_and_rank_as_alone() -> None:
    fake, alone_fake = FakeReranker(), FakeReranker()
    batched = RerankScheduler(fake, SchedulerConfig(max_wait_us=50_000))
    alone = RerankScheduler(alone_fake, SchedulerConfig(max_batch_requests=1))
    requests = [rerank_req(f"query {i}", *[f"document {i} {k} " * (1 + k) for k in range(1 + i % 4)], top_n=1 + i % 3)
                for i in range(30)]
    try:
        futures = [batched.submit(r) for r in requests]
        merged = [f.result(5) for f in futures]
        singles = [alone.submit(r).result(5) for r in requests]
    finally:
        batched.close()
        alone.close()
    assert len(fake.batches) <= 4 and sum(fake.batches) == sum(len(r.documents) for r in requests), fake.batches
    for request, a, b in zip(requests, merged, singles, strict=True):
        assert a.results == b.results and len(a.results) == min(request.top_n or 99, len(request.documents))
        assert a.tokens == b.tokens > 0
        assert [r.logit for r in a.results] == sorted((r.logit for r in a.results), reverse=True)


def test_rerank_validation_names_the_field() -> None:
    scheduler = RerankScheduler(FakeReranker(), SchedulerConfig(max_inputs_per_request=3))
    try:
        on_admission = {
            "documents": [rerank_req("q"), rerank_req("q", "a", "b", "c", "d")],
            "query": [rerank_req("", "a"), rerank_req(" \n", "a")],
            "top_n": [rerank_req("q", "a", top_n=0), rerank_req("q", "a", top_n=-2)],
            "long_documents": [rerank_req("q", "a", long_documents="chunks")],
            "instruction": [rerank_req("q", "a", instruction="a task")],  # this reranker takes none
        }
        for field, bad in on_admission.items():
            for request in bad:
                with pytest.raises(InvalidFieldError) as info:
                    scheduler.submit(request)
                assert info.value.field == field, request
        tokenized = {  # checked on a tokenizer thread
            "documents[1]": [rerank_req("q", "ok", "bad \udc80"), rerank_req("q", "ok", 7),  # type: ignore[arg-type]
                             rerank_req("q", "ok", " ".join(["w"] * 20), truncate=False)],
            "query": [rerank_req("bad \ud800", "a")],
        }
        for field, bad in tokenized.items():
            for request in bad:
                with pytest.raises(InvalidFieldError) as info:
                    scheduler.submit(request).result(5)
                assert info.value.field == field, request
        assert len(scheduler.submit(rerank_req("q", "a", "b", top_n=10)).result(5).results) == 2  # clamped
    finally:
        scheduler.close()
