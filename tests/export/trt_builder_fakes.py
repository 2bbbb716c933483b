"""A stand-in for datacenter TensorRT's builder, for what cannot run here (no GPU, no datacenter wheel).

Each class mirrors the real class named in its ``REAL`` attribute, with the same method and parameter
names; ``tests/export/test_trt_contract.py`` checks them against the real ``tensorrt-cu12-bindings``
so that these fakes cannot drift from the interface they stand in for.

The timing cache remembers the GPU model it was made on: ``set_timing_cache(cache, ignore_mismatch=False)``
refuses one made on another, as TensorRT does, and a build adds its tuning results only to the cache
the config holds.
"""

from __future__ import annotations

import types
from typing import Any


class BuilderFlag:
    REAL = "BuilderFlag"
    TF32 = "TF32"


class ITimingCache:
    REAL = "ITimingCache"

    def __init__(self, device: str, entries: int) -> None:
        self.device, self.entries = device, entries

    def serialize(self) -> bytes:
        return f"timing-cache|{self.device}|{self.entries}".encode()

    @staticmethod
    def parse(data: bytes) -> tuple[str, int]:
        _, device, entries = data.decode().split("|")
        return device, int(entries)


class IOptimizationProfile:
    REAL = "IOptimizationProfile"

    def __init__(self) -> None:
        self.shapes: dict[str, tuple[Any, Any, Any]] = {}

    def set_shape(self, input: str, min: Any, opt: Any, max: Any) -> None:  # TensorRT's parameter names
        self.shapes[input] = (min, opt, max)


class IBuilderConfig:
    REAL = "IBuilderConfig"

    def __init__(self, device: str) -> None:
        self.device = device
        self.flags = {BuilderFlag.TF32}  # datacenter TensorRT's default on Ampere and newer
        self.profiles: list[IOptimizationProfile] = []
        self.cache: ITimingCache | None = None
        self.progress_monitor: Any = None

    def get_flag(self, flag: str) -> bool:
        return flag in self.flags

    def clear_flag(self, flag: str) -> None:
        self.flags.discard(flag)

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, serialized_timing_cache: bytes) -> ITimingCache:
        if not serialized_timing_cache:
            return ITimingCache(self.device, 0)
        return ITimingCache(*ITimingCache.parse(bytes(serialized_timing_cache)))

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        if cache.device != self.device and not ignore_mismatch:
            return False  # "the timing cache was created on a different device"
        self.cache = cache
        return True


class Builder:
    REAL = "Builder"

    def __init__(self, device: str) -> None:
        self.device = device
        self.built: list[dict[str, Any]] = []  # the config's state at each build

    def create_builder_config(self) -> IBuilderConfig:
        return IBuilderConfig(self.device)

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def build_serialized_network(self, network: Any, config: IBuilderConfig) -> bytes:
        if config.cache is not None:
            config.cache.entries += 1  # this build's tactic timings
        self.built.append({"tf32": config.get_flag(BuilderFlag.TF32), "profiles": len(config.profiles)})
        return b"fake plan " * 1000


def fake_tensorrt(version: str = "10.13.0.35") -> types.ModuleType:
    """A module with the names the builder reads from ``tensorrt`` (and no progress monitor)."""
    module = types.ModuleType("tensorrt")
    module.__version__ = version  # type: ignore[attr-defined]
    module.BuilderFlag = BuilderFlag  # type: ignore[attr-defined]
    return module


FAKES = (BuilderFlag, ITimingCache, IOptimizationProfile, IBuilderConfig, Builder)
