"""Corpus embedding on Ray (``embedrt embed ... --ray``, ``embedrt.bulk.ray.embed_dataset``), on a local Ray of 2 CPUs.

One Ray instance for the module (started here, no dashboard, shut down at its end even on failure),
its workers importing this checkout. The ``--ray`` job must give what the local job gives: the same
shards to the byte, the same record; resume, refuse and survive a killed actor as the local job does.
Selected with ``-m ray``; skipped without Ray.
"""

from __future__ import annotations

import gc
import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from bulk_helpers import (
    Interrupted,
    record_of,
    same_run,
    stop_after,
    table_of,
    with_bad_rows,
    write_corpus,
    write_jsonl,
)
from runtime_helpers import mixed_texts

import embedrt
from embedrt import Embedder, EmbedrtError, InvalidInputError
from embedrt.bulk import BulkOptions, RayOptions, Record, run
from embedrt.cli import main

pytest.importorskip("ray.data", reason="needs the ray extra: pip install 'embedrt[ray]'")
import ray

from embedrt.bulk.ray import embed_dataset
from embedrt.bulk.ray.cluster import RayJobError, plan_actors
from embedrt.bulk.ray.driver import _model
from embedrt.bulk.ray.worker import ShardWriter, WorkerSpec

pytestmark = pytest.mark.ray

SOURCES = str(Path(embedrt.__file__).resolve().parents[1])  # this checkout's runtime/src, for every worker
TEXTS = mixed_texts(53, seed=5)
TWO_ACTORS = RayOptions(actors=2, cpus_per_actor=1)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the workers copy artefacts given by URL (``EMBEDRT_CACHE``), this module's own."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def cluster(cache: Path) -> Iterator[None]:
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING",
             runtime_env={"env_vars": {"PYTHONPATH": SOURCES, "EMBEDRT_CACHE": str(cache)}})
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        yield
    finally:
        ray.shutdown()


def _options(artefact: Path | str, inputs: list[Path], output: Path, **kw: Any) -> BulkOptions:
    base = BulkOptions(artefact=artefact, inputs=tuple(str(i) for i in inputs), output=output, shard_size=10,
                       window=4, progress=False)
    return replace(base, **kw)


def _actors() -> list[dict[str, Any]]:
    """The live ShardWriter actors of this Ray (Ray's own actor table: pid, restarts)."""
    from ray._private import state  # the public state API needs the dashboard, which the fixture leaves out

    return [a for a in state.actors().values() if a["ActorClassName"] == "ShardWriter" and a["State"] == "ALIVE"]


def _idle(seconds: float = 60) -> float:
    """Wait until every CPU is free again: Ray Data's actor pools go with the datasets that ran them, and the
    ``--ray`` jobs after them need the CPUs."""
    started = time.monotonic()
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources()["CPU"]:
        assert time.monotonic() < started + seconds, ray.available_resources()
        gc.collect()
        time.sleep(0.1)
    return time.monotonic() - started


def _failure(dataset: Any) -> str:
    """Why running ``dataset`` fails. Nothing of the failed run may outlive this call: a traceback holds Ray
    Data's executor, and so its actors and their CPUs, alive; Ray Data logs one, which pytest would keep."""
    logging.disable(logging.ERROR)
    try:
        dataset.materialize()
    except Exception as exc:
        return str(exc)
    finally:
        logging.disable(logging.NOTSET)
    raise AssertionError("the dataset ran")


def test_workers_import_this_checkout(cluster: None) -> None:
    @ray.remote
    def where() -> str:
        return str(embedrt.__file__)

    assert ray.get(where.remote()).startswith(SOURCES)


def test_embed_dataset_equals_embed(cluster: None, qwen3_artefact: Path, qwen3: Embedder, tmp_path: Path) -> None:
    keyed = ray.data.from_items([{"text": t, "key": f"doc-{i}"} for i, t in enumerate(TEXTS)], override_num_blocks=4)
    table = pa.concat_tables(ray.get(embed_dataset(keyed, qwen3_artefact, id_column="key", batch_size=16)
                                     .to_arrow_refs()))
    assert table.column_names == ["id", "embedding"]
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 64)
    got = dict(zip(table.column("id").to_pylist(), table.column("embedding").to_pylist(), strict=True))
    assert sorted(got) == sorted(f"doc-{i}" for i in range(len(TEXTS)))
    np.testing.assert_allclose(np.array([got[f"doc-{i}"] for i in range(len(TEXTS))], dtype=np.float32),
                               qwen3.embed_documents(TEXTS), atol=2e-6)
    # No id column: each row's index in the dataset's order, here over three Parquet files of several row groups.
    paths = []
    for n, (a, b) in enumerate(((0, 20), (20, 21), (21, 53))):
        paths.append(str(tmp_path / f"part{n}.parquet"))
        pq.write_table(pa.table({"body": TEXTS[a:b]}), paths[-1], row_group_size=7)
    embedded = embed_dataset(ray.data.read_parquet(paths), qwen3_artefact, text_column="body", prompt="query",
                             dimensions=32, batch_size=8)  # one actor of one CPU: the other is Ray Data's
    table = pa.concat_tables(ray.get(embedded.to_arrow_refs()))
    got = dict(zip(table.column("id").to_pylist(), table.column("embedding").to_pylist(), strict=True))
    assert sorted(got) == list(range(len(TEXTS)))
    np.testing.assert_allclose(np.array([got[i] for i in range(len(TEXTS))], dtype=np.float32),
                               qwen3.embed_queries(TEXTS, dimensions=32), atol=2e-6)
    del keyed, embedded
    _idle()


def test_embed_dataset_checks_options_and_names_bad_rows(cluster: None, qwen3_artefact: Path) -> None:
    with pytest.raises(InvalidInputError, match="dimensions"):
        embed_dataset(ray.data.from_items([{"text": "a"}]), qwen3_artefact, dimensions=1000)
    bad = ray.data.from_items([{"text": "fine", "k": 1}, {"text": None, "k": 2}])
    assert 'the row with id 2 has a "text" that is NoneType, not str' in _failure(embed_dataset(bad, qwen3_artefact,
                                                                                               id_column="k"))
    _idle()


def test_ray_gives_the_local_shards_and_record(cluster: None, qwen3_artefact: Path, tmp_path: Path) -> None:
    """Every input format, bad rows skipped: the same shards, byte for byte, and the same record."""
    inputs = with_bad_rows(tmp_path / "in", TEXTS)
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    run(_options(qwen3_artefact, inputs, local, on_error="skip"))
    messages: list[str] = []
    record = run(_options(qwen3_artefact, inputs, on_ray, on_error="skip", ray=TWO_ACTORS),
                 log=messages.append)
    assert messages == ["embedding on Ray: 2 actors of 1 CPU (1 thread) each"]
    assert record.complete and record.rows == 55 and record.skipped == 2
    same_run(on_ray, local)


def test_standard_input_on_ray(cluster: None, qwen3_artefact: Path, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The driver reads the inputs, so standard input goes to a cluster as a file does."""
    data = ("\n".join(TEXTS[:12]) + "\n").encode()
    for out, ray_options in ((tmp_path / "local", None), (tmp_path / "ray", TWO_ACTORS)):
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
        run(BulkOptions(artefact=qwen3_artefact, inputs=("-",), output=out, shard_size=5, progress=False,
                        ray=ray_options))
    assert table_of(tmp_path / "ray")[0] == list(range(12))
    same_run(tmp_path / "ray", tmp_path / "local")


def test_resume_refuse_and_overwrite_on_ray(cluster: None, qwen3_artefact: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    inputs = write_corpus(tmp_path / "in", TEXTS)
    whole = tmp_path / "whole"
    run(_options(qwen3_artefact, inputs, whole))
    out = tmp_path / "out"
    with pytest.raises(Interrupted):  # stopped after 2 shards; others may be written, never recorded
        run(_options(qwen3_artefact, inputs, out, ray=TWO_ACTORS), after_shard=stop_after(2))
    doc = record_of(out)
    assert not doc["complete"] and len(doc["shards"]) == 2
    with pytest.raises(InvalidInputError, match=r"made with other arguments \(--dimensions: \(none\) -> 32"):
        run(_options(qwen3_artefact, inputs, out, dimensions=32, ray=TWO_ACTORS))
    args = ["embed", str(qwen3_artefact), "--input", *map(str, inputs), "--output", f"{out}/", "--shard-size", "10",
            "--ray", "--actors", "2", "--cpus-per-actor", "1"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "resuming: 2 shards (20 rows) already done" in err
    assert f"wrote 53 x 64 embeddings in 6 shards to {out}/" in err
    assert [s["sha256"] for s in record_of(out)["shards"]][:2] == [s["sha256"] for s in doc["shards"]]
    assert table_of(out)[0] == list(range(53))
    np.testing.assert_allclose(table_of(out)[1], table_of(whole)[1], atol=2e-6)  # the command's window is 4,096
    # A run interrupted in one process is finished on Ray, and the other way round: one layout.
    mixed = tmp_path / "mixed"
    with pytest.raises(Interrupted):
        run(_options(qwen3_artefact, inputs, mixed), after_shard=stop_after(3))
    run(_options(qwen3_artefact, inputs, mixed, ray=TWO_ACTORS))
    same_run(mixed, whole)
    assert main([*args, "--overwrite", "--dimensions", "32"]) == 0
    assert record_of(out)["settings"]["dimensions"] == 32 and table_of(out)[1].shape == (53, 32)


def test_a_killed_actor_loses_and_duplicates_no_rows(cluster: None, qwen3_artefact: Path, tmp_path: Path) -> None:
    """SIGKILL to every actor's process while it holds shards: Ray starts them again and hands them the same
    shards; the run completes with the shards an uninterrupted local run writes, byte for byte."""
    src = write_jsonl(tmp_path / "in.jsonl", [f"{t} {i}" for i in range(24) for t in TEXTS[:50]])  # 1,200 rows
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    run(_options(qwen3_artefact, [src], local, shard_size=100, window=64))
    killed: list[int] = []
    later: list[dict[str, Any]] = []

    def kill(record: Record) -> None:
        if len(record.shards) == 1:
            for actor in _actors():
                os.kill(actor["Pid"], signal.SIGKILL)
                killed.append(actor["Pid"])
        if len(record.shards) == 8:
            later.extend(_actors())

    run(_options(qwen3_artefact, [src], on_ray, shard_size=100, window=64, ray=TWO_ACTORS), after_shard=kill)
    assert len(killed) == 2 and len(later) == 2, (killed, later)
    assert all(a["NumRestarts"] >= 1 and a["Pid"] not in killed for a in later)  # started again, new processes
    assert table_of(on_ray)[0] == list(range(1200))
    same_run(on_ray, local)


def test_an_artefact_url_on_ray(cluster: None, cache: Path, qwen3_artefact: Path, tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Given a URL, the driver reads only the manifest and each actor fetches a copy: the local shards."""
    monkeypatch.setenv("EMBEDRT_CACHE", str(tmp_path / "driver-cache"))
    inputs = write_corpus(tmp_path / "in", TEXTS)
    url = qwen3_artefact.as_uri()
    run(_options(qwen3_artefact, inputs, tmp_path / "local"))
    record = run(_options(url, inputs, tmp_path / "ray", ray=TWO_ACTORS))
    assert record.settings["artefact"] == url and record.complete
    assert [s["sha256"] for s in record_of(tmp_path / "ray")["shards"]] == \
        [s["sha256"] for s in record_of(tmp_path / "local")["shards"]]
    assert [p.name[:11] for p in (cache / "artefacts").iterdir()] == ["tiny-qwen3-"]  # the actors' one copy
    assert not (tmp_path / "driver-cache").exists()  # the driver fetched nothing


def test_a_worker_that_cannot_load_the_model_says_where(cluster: None, tmp_path: Path) -> None:
    actor = ray.remote(ShardWriter).options(num_cpus=1).remote(WorkerSpec(str(tmp_path / "nowhere")), str(tmp_path))
    try:
        with pytest.raises(RayJobError, match=r"a Ray worker could not load the model \(on .+: ArtefactError: .*\); "
                                              r"the artefact must be a path every node of the cluster can read "
                                              r"\(a shared file system\), or a URL"):
            _model(ray, [actor])
    finally:
        ray.kill(actor)


def test_without_ray_the_flag_names_the_extra(qwen3_artefact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", ["a"])
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails as where it is not installed
    assert main(["embed", str(qwen3_artefact), "--input", str(src), "--output", f"{tmp_path}/out/", "--ray"]) == 2
    assert capsys.readouterr().err == ("embedrt embed: error: --ray needs Ray Data: pip install 'embedrt[ray]' "
                                       "(missing: ray)\n")
    assert not (tmp_path / "out").exists()
    with pytest.raises(EmbedrtError, match=r"embed_dataset needs Ray Data: pip install 'embedrt\[ray\]'"):
        embed_dataset(None, qwen3_artefact)


def test_ray_flags_need_ray(qwen3_artefact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", ["a"])
    assert main(["embed", str(qwen3_artefact), "--input", str(src), "--output", f"{tmp_path}/o/", "--actors", "2"]) == 2
    assert "embedrt embed: error: --actors go with --ray" in capsys.readouterr().err
    assert main(["embed", str(qwen3_artefact), "a", "--output", str(tmp_path / "o.npy"), "--ray"]) == 2
    assert "--ray go with --output DIR/" in capsys.readouterr().err


def test_importing_the_ray_modules_does_not_import_ray() -> None:
    code = ("import json, sys\n"
            "import embedrt, embedrt.bulk, embedrt.bulk.ray, embedrt.bulk.ray.driver, embedrt.bulk.ray.worker\n"
            "from embedrt.cli import build_parser\n"
            "build_parser()\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'ray')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def _cluster(gpus: float, *nodes: float) -> SimpleNamespace:
    total = {"CPU": sum(nodes), **({"GPU": gpus} if gpus else {})}
    return SimpleNamespace(cluster_resources=lambda: total,
                           nodes=lambda: [{"Alive": True, "Resources": {"CPU": n}} for n in nodes])


def test_actors_are_sized_from_the_cluster() -> None:
    assert str(plan_actors(_cluster(0, 2), RayOptions())) == "1 actor of 2 CPUs (2 threads) each"
    assert str(plan_actors(_cluster(0, 2), RayOptions(), spare=1)) == "1 actor of 1 CPU (1 thread) each"
    assert str(plan_actors(_cluster(0, 32, 12), RayOptions())) == "5 actors of 8 CPUs (8 threads) each"
    assert str(plan_actors(_cluster(0, 16, 16), RayOptions(), spare=1)) == "4 actors of 7 CPUs (7 threads) each"
    assert str(plan_actors(_cluster(0, 4), RayOptions(cpus_per_actor=1))) == "4 actors of 1 CPU (1 thread) each"
    assert str(plan_actors(_cluster(4, 32, 32), RayOptions())) == "4 actors of 1 GPU, 1 CPU each"
    assert str(plan_actors(_cluster(2, 32), RayOptions(gpus_per_actor=0.5))) == "4 actors of 0.5 GPU, 1 CPU each"
    assert plan_actors(_cluster(4, 32), RayOptions(gpus_per_actor=0, actors=3)).gpus == 0
    with pytest.raises(RayJobError, match="the Ray cluster has 0 GPUs"):
        plan_actors(_cluster(0, 8), RayOptions(gpus_per_actor=1))
    with pytest.raises(RayJobError, match="no node of the Ray cluster has 16 CPUs"):
        plan_actors(_cluster(0, 8, 8), RayOptions(cpus_per_actor=16))
    with pytest.raises(InvalidInputError, match="actors must be at least 1"):
        plan_actors(_cluster(0, 8), RayOptions(actors=0))
