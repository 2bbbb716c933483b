"""Datacenter TensorRT builds, with its builder faked (``trt_builder_fakes``: no GPU, no wheel here).

What is checked is our side of the calls: TF32 off for FP32 engines, and a timing cache that TensorRT
refuses (made on another GPU model) replaced by a fresh one, which is what gets written back.
The fakes' names and signatures are checked against the real bindings in ``test_trt_contract.py``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from trt_builder_fakes import Builder, ITimingCache, fake_tensorrt

from embedrt.backends.cuda import GpuInfo
from embedrt.engines import engine_dir

HERE = "NVIDIA H100 PCIe"


class _Net:
    num_layers = 3


@pytest.fixture
def datacenter(qwen3_artefact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Builder]:
    """An artefact copy and the fake builder that ``build_engines`` will use on a fake H100."""
    from embedrt_export.trt import build as build_module
    from embedrt_export.trt.flavours import DatacenterFlavour

    artefact = tmp_path / "art"
    shutil.copytree(qwen3_artefact, artefact)
    builder = Builder(HERE)
    logger: Any = type("Logger", (), {"errors": []})()
    monkeypatch.setattr(build_module, "load_flavour", lambda name: DatacenterFlavour(fake_tensorrt()))
    monkeypatch.setattr(build_module, "current_gpu", lambda: GpuInfo(0, HERE, "90", 80 << 30))
    monkeypatch.setattr(build_module, "parse_network",
                        lambda flavour, path: build_module._Network(logger, builder, _Net(), None))
    return artefact, builder


def _build(artefact: Path, precisions: tuple[str, ...], lines: list[str] | None = None) -> list[Any]:
    from embedrt_export.trt import BuildOptions, build_engines

    log = lines.append if lines is not None else (lambda _: None)
    return build_engines(artefact, BuildOptions(precisions, None, "tensorrt", verify=False), log=log)


def test_fp32_engines_are_built_without_tf32(datacenter: tuple[Path, Builder]) -> None:
    artefact, builder = datacenter
    records = {r.key.precision: r for r in _build(artefact, ("fp32", "fp16"))}
    assert [b["tf32"] for b in builder.built] == [False, True]  # the config's state when each was built
    assert records["fp32"].build["tf32"] is False
    assert records["fp16"].build["tf32"] is True  # FP16 graphs: TF32 only touches their FP32 islands


def test_a_timing_cache_from_another_gpu_is_replaced_not_kept(datacenter: tuple[Path, Builder]) -> None:
    artefact, _ = datacenter
    first = _build(artefact, ("fp16",))[0]
    cache_path = engine_dir(artefact, first.key) / "timing.cache"
    assert first.build["timing_cache"] == "new"
    assert ITimingCache.parse(cache_path.read_bytes()) == (HERE, 1)

    again = _build(artefact, ("fp16",))[0]  # same GPU model: the cache is used and grows
    assert again.build["timing_cache"] == "reused"
    assert ITimingCache.parse(cache_path.read_bytes()) == (HERE, 2)

    cache_path.write_bytes(ITimingCache("NVIDIA H200", 7).serialize())  # e.g. an artefact copied across
    lines: list[str] = []
    replaced = _build(artefact, ("fp16",), lines)[0]
    assert ITimingCache.parse(cache_path.read_bytes()) == (HERE, 1)  # this GPU's fresh cache, not the stale one
    assert replaced.build["timing_cache"].startswith("replaced")
    assert any("timing cache" in line and "not used" in line for line in lines), lines
