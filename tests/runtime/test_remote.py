"""Artefacts at a URL (``remote.py``): copied once into the cache, verified, loaded from there; over
``file://`` and over S3 (moto's server on loopback, through pyarrow's S3 file system, as on a cluster).
A corpus job given a URL fetches a copy in every worker, and records the URL."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from bulk_helpers import record_of, table_of, write_jsonl
from runtime_helpers import mixed_texts

from embedrt import ArtefactError, Embedder
from embedrt.bulk import BulkOptions, run
from embedrt.remote import fetch, is_url, read_manifest

TEXTS = mixed_texts(12, seed=3)


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EMBEDRT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "artefacts"


@pytest.fixture()
def remote(qwen3_artefact: Path, tmp_path: Path) -> Path:
    """A copy of the tiny artefact, standing for the uploaded one, to change at will."""
    return Path(shutil.copytree(qwen3_artefact, tmp_path / "bucket" / "tiny-qwen3"))


def test_urls_are_told_from_paths() -> None:
    assert is_url("s3://b/x") and is_url("file:///tmp/x") and is_url("gs://b/x?a=1")
    assert not is_url("engines/x") and not is_url("/abs/x") and not is_url(Path("s3:/x")) and not is_url("C:x")


def test_a_file_url_is_fetched_once_and_loads_as_the_path(remote: Path, cache: Path, qwen3: Embedder) -> None:
    url = remote.as_uri()
    with Embedder.load(url, "onnxruntime", precision="fp32") as embedder:
        np.testing.assert_array_equal(embedder.embed_documents(TEXTS), qwen3.embed_documents(TEXTS))
    (copy,) = list(cache.iterdir())
    assert copy.name.startswith("tiny-qwen3-")
    assert sorted(p.name for p in copy.iterdir()) == sorted(p.name for p in remote.iterdir())
    stamp = (copy / "manifest.json").stat().st_mtime_ns
    assert fetch(url) == copy and (copy / "manifest.json").stat().st_mtime_ns == stamp  # the cached copy, as is
    assert read_manifest(url).name == qwen3.manifest.name


def test_a_new_export_at_the_url_replaces_the_copy(remote: Path, cache: Path) -> None:
    url = remote.as_uri()
    first = fetch(url)
    manifest = json.loads((remote / "manifest.json").read_text())
    manifest["name"] = "renamed"
    (remote / "manifest.json").write_text(json.dumps(manifest))
    assert fetch(url) == first and read_manifest(str(first)).name == "renamed"
    assert [p.name for p in cache.iterdir()] == [first.name]  # replaced, no second copy, no leftovers


def test_a_damaged_or_incomplete_upload_is_refused_and_leaves_no_copy(remote: Path, cache: Path) -> None:
    graph = remote / "model.fp32.onnx"
    data = graph.read_bytes()
    graph.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(ArtefactError, match=r"model\.fp32\.onnx at file://.* does not match the manifest's sha256"):
        fetch(remote.as_uri())
    graph.unlink()
    with pytest.raises(ArtefactError, match=r"lacks model\.fp32\.onnx: its upload is incomplete"):
        fetch(remote.as_uri())
    (remote / "manifest.json").unlink()
    with pytest.raises(ArtefactError, match=r"has no manifest\.json: not an embedrt artefact"):
        Embedder.load(remote.as_uri())
    assert not cache.exists() or list(cache.iterdir()) == []  # no copy, no staging directory


def _fetch(url: str) -> str:
    return str(fetch(url))


def test_processes_fetching_at_once_end_with_one_copy(remote: Path, cache: Path) -> None:
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        got = pool.map(_fetch, [remote.as_uri()] * 2)
    assert got[0] == got[1]
    assert [p.name for p in cache.iterdir()] == [Path(got[0]).name]


def test_a_corpus_job_takes_a_url(remote: Path, cache: Path, qwen3_artefact: Path, tmp_path: Path) -> None:
    """Workers each fetch the artefact (here into one cache); the shards are those of the job given the path."""
    src = write_jsonl(tmp_path / "in.jsonl", TEXTS * 3)
    by_path, by_url = tmp_path / "path", tmp_path / "url"
    run(BulkOptions(artefact=qwen3_artefact, inputs=(str(src),), output=by_path, shard_size=10, progress=False))
    run(BulkOptions(artefact=remote.as_uri(), inputs=(str(src),), output=by_url, shard_size=10, progress=False,
                    workers=2))
    assert record_of(by_url)["settings"]["artefact"] == remote.as_uri()
    for a, b in zip(record_of(by_path)["shards"], record_of(by_url)["shards"], strict=True):
        assert a["sha256"] == b["sha256"]
    assert table_of(by_url)[0] == list(range(36))


@pytest.fixture(scope="module")
def s3() -> Iterator[str]:
    """A local S3 (moto) on loopback; the query string pyarrow's S3 file system takes to reach it."""
    moto_server = pytest.importorskip("moto.server", reason="needs moto (the dev group: make setup)")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"endpoint_override={host}:{port}&scheme=http&region=us-east-1"
    finally:
        server.stop()


def test_an_s3_url(s3: str, qwen3_artefact: Path, qwen3: Embedder, cache: Path,
                   monkeypatch: pytest.MonkeyPatch) -> None:
    from pyarrow import fs

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    bucket, _ = fs.FileSystem.from_uri(f"s3://models?{s3}&allow_bucket_creation=true")
    bucket.create_dir("models")
    fs.copy_files(str(qwen3_artefact), "models/engines/tiny-qwen3", destination_filesystem=bucket)
    url = f"s3://models/engines/tiny-qwen3?{s3}"
    assert read_manifest(url).name == qwen3.manifest.name
    with Embedder.load(url, "onnxruntime", precision="fp32") as embedder:
        np.testing.assert_array_equal(embedder.embed_documents(TEXTS), qwen3.embed_documents(TEXTS))
    with pytest.raises(ArtefactError, match=r"s3://models/engines/nothing.* has no manifest\.json"):
        Embedder.load(f"s3://models/engines/nothing?{s3}")


def test_embedrt_serve_takes_a_url(remote: Path, cache: Path, qwen3: Embedder) -> None:
    """The command as users run it, its artefact a URL: fetched before it reports ready, then served."""
    import grpc

    from embedrt.server import pb2, pb2_grpc

    command = [sys.executable, "-m", "embedrt.cli", "serve", remote.as_uri(), "--grpc-port", "0", "--http-port", "0"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "EMBEDRT_CACHE": str(cache.parent), "EMBEDRT_LOG_LEVEL": "WARNING"})
    try:
        port, deadline, seen = None, time.monotonic() + 60, []
        assert process.stderr is not None
        while port is None and time.monotonic() < deadline:
            line = process.stderr.readline()
            if not line:
                break
            seen.append(line)
            found = re.search(r"ready: .* gRPC 127\.0\.0\.1:(\d+)", line)
            port = int(found.group(1)) if found else None
        assert port, f"the server never reported ready: {''.join(seen)}"
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = pb2_grpc.EmbedderStub(channel).Embed(pb2.EmbedRequest(inputs=TEXTS[:3]), timeout=30)
        got = np.array([e.values for e in reply.embeddings], dtype=np.float32)
        np.testing.assert_allclose(got, qwen3.embed(TEXTS[:3]), atol=1e-6)
        assert [p.name[:11] for p in cache.iterdir()] == ["tiny-qwen3-"]
    finally:
        process.terminate()
        process.wait(30)
