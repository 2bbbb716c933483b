"""The backend contract, checked the same way on every backend that can run here.

What the runtime core relies on, whatever the backend (``embedrt.backends.base.Backend``):

- a text's outputs in a padded batch equal its outputs run alone (batched equals alone);
- ``run_many`` gives what ``run`` gives, batch by batch, in order;
- ``limits()`` holds: shapes within it run, a sequence beyond it is the caller's ``InvalidInputError``;
- ``close()`` is idempotent, and a backend not open (never, or no longer) refuses with ``BackendError``;
- it feeds the inputs and returns the outputs the manifest names, whatever the task.

Backends: ONNX Runtime CPU on the fp32 graph, fused and eager; the TensorRT backend over
``trt_fakes`` (fake CUDA and TensorRT, the real backend code); and, marker ``gpu``, ONNX Runtime
CUDA and TensorRT on a real GPU, skipped with the reason printed where there is none. Each on two
graphs: the tiny Qwen3 embedder (ids and mask in, sentence_embedding and embedding_norm out) and
the tiny BERT cross-encoder reranker (token type ids in too, score and logit out).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from trt_fakes import FakeTensorRT, install_fake_cuda

from embedrt.backends.base import Backend, Batch
from embedrt.batching import collate
from embedrt.config import BackendConfig
from embedrt.engines import ProfileShape
from embedrt.errors import ArtefactError, BackendError, InvalidInputError
from embedrt.manifest import load_manifest
from embedrt.pairs import PairTokenizer
from embedrt.tokenizer import Encoded, TextTokenizer

TEXTS = ["The cat sat on the mat.", "a", "", "def f(x):\n    return x * 2",
         "Der schnelle braune Fuchs springt über den faulen Hund. " * 4, "emoji 🚀 and CJK 日本語"]
FAKE_PROFILES = (ProfileShape((1, 1), (4, 64), (4, 64)), ProfileShape((1, 65), (2, 128), (2, 128)))
BACKENDS = [
    "onnxruntime-cpu-fused",
    "onnxruntime-cpu-eager",
    "tensorrt-fakes",
    pytest.param("onnxruntime-cuda", marks=pytest.mark.gpu),
    pytest.param("tensorrt-gpu", marks=pytest.mark.gpu),
]
# Minimum cosine between the same text's embeddings in two runs: FP32 everywhere.
MIN_COSINE = 0.99999

Make = Callable[[], Backend]


def _no_gpu_reason() -> str | None:
    from embedrt.backends import cuda

    try:
        cuda.gpu_info(0)
    except BackendError as exc:
        return f"no usable NVIDIA GPU here: {exc}"
    return None


@pytest.fixture(scope="module")
def tensorrt_built(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Path], Path]:
    """Copies of the tiny artefacts with an FP32 engine built for the GPU here (each built once per module)."""
    built: dict[Path, Path] = {}

    def build(source: Path) -> Path:
        if source in built:
            return built[source]
        reason = _no_gpu_reason()
        if reason:
            pytest.skip(reason)
        from embedrt.backends.trt_loader import installed_flavours
        from embedrt_export.errors import ExportError
        from embedrt_export.trt import BuildOptions, build_engines

        flavours = installed_flavours()
        if not flavours:
            pytest.skip("no TensorRT flavour installed (pip install 'embedrt[tensorrt-rtx]' or datacenter tensorrt)")
        artefact = tmp_path_factory.mktemp("contract") / source.name
        shutil.copytree(source, artefact)
        flavour = "tensorrt" if "tensorrt" in flavours else "tensorrt-rtx"
        try:
            build_engines(artefact, BuildOptions(("fp32",), None, flavour), log=print)
        except (ExportError, BackendError) as exc:
            pytest.skip(f"{flavour} cannot build for this GPU: {exc}")
        built[source] = artefact
        return artefact

    return build


@pytest.fixture(params=["embed", "rerank"])
def artefact(request: pytest.FixtureRequest) -> Path:
    """The graph the backend runs: the tiny embedder, or the tiny text-pair reranker."""
    return request.getfixturevalue("qwen3_artefact" if request.param == "embed" else "cross_encoder_artefact")


@pytest.fixture(params=BACKENDS)
def make(request: pytest.FixtureRequest, artefact: Path, monkeypatch: pytest.MonkeyPatch) -> Make:
    """A function making a fresh, unopened backend of the parametrised kind."""
    from embedrt.backends.onnxruntime import OnnxRuntimeBackend, cuda_available
    from embedrt.backends.tensorrt import TensorRTBackend

    name = request.param
    manifest = load_manifest(artefact)
    if name.startswith("onnxruntime-cpu"):
        attention = name.rsplit("-", 1)[1]
        try:
            manifest.graph("fp32", attention)
        except ArtefactError as exc:
            pytest.skip(f"no {attention} fp32 graph in this artefact: {exc}")
        config = BackendConfig(precision="fp32", device="cpu", attention=attention)
        return lambda: OnnxRuntimeBackend(artefact, manifest, config)
    if name == "tensorrt-fakes":
        install_fake_cuda(monkeypatch)
        trt = FakeTensorRT(FAKE_PROFILES, hidden=manifest.hidden_size, task=manifest.task)
        return lambda: TensorRTBackend(artefact, manifest, BackendConfig(precision="fp32"), loader=trt.loader())
    if name == "onnxruntime-cuda":
        reason = _no_gpu_reason()
        if reason:
            pytest.skip(reason)
        if not cuda_available():
            pytest.skip("this onnxruntime has no CUDA execution provider (pip install onnxruntime-gpu)")
        config = BackendConfig(precision="fp32", device="cuda")
        return lambda: OnnxRuntimeBackend(artefact, manifest, config)
    built = request.getfixturevalue("tensorrt_built")(artefact)
    return lambda: TensorRTBackend(built, load_manifest(built), BackendConfig(precision="fp32"))


@pytest.fixture
def backend(make: Make) -> Iterator[Backend]:
    with make() as opened:
        yield opened


@pytest.fixture
def items(artefact: Path) -> list[Encoded]:
    manifest = load_manifest(artefact)
    if manifest.task == "embed":
        return TextTokenizer(artefact, manifest).encode(TEXTS, truncate=True)
    return PairTokenizer(artefact, manifest).encode([(TEXTS[0], t) for t in TEXTS] + [("", "")], truncate=True)


def _batch(backend: Backend, rows: list[Encoded], sequence: int | None = None) -> Batch:
    manifest = backend.manifest
    types = [r.type_ids for r in rows] if rows[0].type_ids is not None else None
    return collate([r.ids for r in rows], sequence or max(r.length for r in rows), manifest.pad_token_id,
                   manifest.padding_side, types)  # type: ignore[arg-type]


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert list(a) == list(b)
    if "sentence_embedding" in a:
        cos = np.einsum("ij,ij->i", a["sentence_embedding"], b["sentence_embedding"]) / (
            np.linalg.norm(a["sentence_embedding"], axis=1) * np.linalg.norm(b["sentence_embedding"], axis=1))
        assert cos.min() >= MIN_COSINE, cos
        np.testing.assert_allclose(a["embedding_norm"], b["embedding_norm"], rtol=1e-3)
    else:
        for name in a:
            np.testing.assert_allclose(a[name], b[name], atol=1e-5)


def test_batched_equals_alone(backend: Backend, items: list[Encoded]) -> None:
    together = backend.run(_batch(backend, items))
    assert list(together) == list(backend.manifest.output_names)  # every output the manifest names, by name
    for name, value in together.items():
        assert value.shape[0] == len(items) and value.dtype == np.float32, name
    if "sentence_embedding" in together:
        assert together["sentence_embedding"].shape == (len(items), backend.manifest.hidden_size)
    alone = [backend.run(_batch(backend, [row])) for row in items]
    _same(together, {name: np.concatenate([a[name] for a in alone]) for name in together})


def test_run_many_equals_run_per_batch(backend: Backend, items: list[Encoded]) -> None:
    batches = [_batch(backend, rows) for rows in (items[:3], items[3:4], items, items[1:3])]
    many = list(backend.run_many(iter(batches)))
    assert len(many) == len(batches)
    for batch, out in zip(batches, many, strict=True):
        _same(out, backend.run(batch))


def test_limits_hold(backend: Backend, items: list[Encoded]) -> None:
    limits = backend.limits()
    longest = limits.max_sequence
    if longest is None:  # unbounded (ONNX Runtime): dynamic axes, nothing to exceed
        assert limits.max_batch is None and limits.sequence_buckets is None
        return
    assert limits.sequence_buckets and max(limits.sequence_buckets) == longest
    rows = min(limits.max_batch or 2, 2)
    token = items[0].ids[:1]
    out = backend.run(_batch(backend, [Encoded(np.repeat(token, longest))] * rows))
    assert all(value.shape[0] == rows for value in out.values())
    with pytest.raises(InvalidInputError, match=f"sequence length {longest + 1}") as info:
        backend.run(_batch(backend, [Encoded(np.repeat(token, longest + 1))]))
    assert not isinstance(info.value, BackendError)  # the caller's shape, not a backend failure
    with pytest.raises(InvalidInputError):
        list(backend.run_many([_batch(backend, items), _batch(backend, [Encoded(np.repeat(token, longest + 1))])]))
    _same(backend.run(_batch(backend, items)), backend.run(_batch(backend, items)))  # still serving


def test_close_is_idempotent_and_a_closed_backend_refuses(make: Make, items: list[Encoded]) -> None:
    backend = make()
    with pytest.raises(BackendError, match="not open"):
        backend.run(_batch(backend, items))
    backend.close()  # closing what never opened is fine too
    backend.open()
    backend.open()  # and opening twice
    assert backend.describe().backend == backend.name and backend.describe().device == backend.device
    backend.run(_batch(backend, items))
    backend.close()
    backend.close()
    batch = _batch(backend, items)
    with pytest.raises(BackendError, match="not open"):
        backend.run(batch)
    with pytest.raises(BackendError, match="not open"):
        list(backend.run_many([batch]))
