"""The engine store inside an artefact: ``ARTEFACT/engines/<key>/{engine.plan, engine.json}``.

A TensorRT plan runs only on the compute capability and the TensorRT version (and flavour) it was
built for, and a mismatched plan deserialises to ``None`` with nothing but a log line. So every plan
sits beside its own ``engine.json`` that says what it is, and the runtime picks and checks a plan
from those records (and the manifest's ONNX checksum) before TensorRT ever sees its bytes.

Keys read ``<flavour>-<trt version>-sm<cc>-<precision>``, e.g. ``tensorrt-rtx-1.7.1.116-sm89-fp16``.
This module is plain data and file handling: no TensorRT, no CUDA, importable everywhere.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import ArtefactError, EngineMismatchError
from .manifest import Manifest
from .storage import atomic_directory

ENGINES_DIR = "engines"
PLAN_NAME = "engine.plan"
RECORD_NAME = "engine.json"
RUNTIME_CACHE_NAME = "runtime.cache"  # TensorRT-RTX's JIT kernel cache, written by the runtime
ENGINE_SCHEMA_VERSION = 1

# Flavour name -> Python module. Datacenter TensorRT first: where both exist it is the one tuned for
# the GPU it runs on.
FLAVOURS: dict[str, str] = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx_bindings"}
# Compute capabilities TensorRT-RTX 1.7 builds for ahead of time (its ComputeCapability enum).
# No 90: Hopper is not a TensorRT-RTX target (on an H100, 1.7.1 refuses even a CURRENT plan at load);
# datacenter TensorRT covers it.
RTX_TARGETS: tuple[str, ...] = ("75", "80", "86", "89", "120", "121")
# Execution contexts the runtime runs side by side, and so the copies of each profile a build makes
# by default (`embedrt build --contexts`). Two runs never share a profile, so two contexts need two
# copies for consecutive batches of one length range (the batcher's usual output) to overlap: one
# batch's copies and host work then hide under the other's compute. Measured cost of the copy
# (TensorRT-RTX 1.7 AOT, 0.6B-width Qwen3, 4 layers, FP16): plan +2.6 %, build 5.9 -> 8.7 s.
CONTEXTS = 2
# Preference when the caller asks for precision "auto": FP16 is the accuracy/speed default; INT8
# trades accuracy for speed, so it is used only when asked for or when it is all there is.
AUTO_PRECISIONS: tuple[str, ...] = ("fp16", "fp32", "int8")

_KEY = re.compile(r"^(?P<flavour>tensorrt(?:-rtx)?)-(?P<version>\d[0-9A-Za-z.+]*)"
                  r"-sm(?P<sm>\d+)-(?P<precision>fp32|fp16|int8)$")


@dataclass(frozen=True, order=True)
class EngineKey:
    flavour: str
    trt_version: str
    sm: str  # compute capability without the dot: "89", "120"
    precision: str

    def __str__(self) -> str:
        return f"{self.flavour}-{self.trt_version}-sm{self.sm}-{self.precision}"

    @classmethod
    def parse(cls, text: str) -> EngineKey:
        match = _KEY.match(text)
        if not match:
            raise ArtefactError(f"{text!r} is not an engine key (<flavour>-<trt version>-sm<cc>-<precision>)")
        return cls(match["flavour"], match["version"], match["sm"], match["precision"])


@dataclass(frozen=True)
class ProfileShape:
    """One optimisation profile over ``[batch, sequence]``: min, opt and max, inclusive."""

    min: tuple[int, int]
    opt: tuple[int, int]
    max: tuple[int, int]

    def covers(self, rows: int, sequence: int) -> bool:
        return self.min[0] <= rows <= self.max[0] and self.min[1] <= sequence <= self.max[1]

    def check(self) -> None:
        for axis in (0, 1):
            if not 1 <= self.min[axis] <= self.opt[axis] <= self.max[axis]:
                raise ArtefactError(f"profile {self.describe()} must satisfy 1 <= min <= opt <= max on each axis")

    def describe(self) -> str:
        return "{}x{}:{}x{}:{}x{}".format(*self.min, *self.opt, *self.max)


@dataclass(frozen=True)
class EngineRecord:
    """What ``engine.json`` says about one plan. ``parity`` is None when no GPU checked the plan."""

    key: EngineKey
    onnx_file: str
    onnx_sha256: str
    plan_sha256: str
    plan_bytes: int
    profiles: tuple[ProfileShape, ...]
    build: dict[str, Any] = field(default_factory=dict)
    parity: dict[str, Any] | None = None
    schema_version: int = ENGINE_SCHEMA_VERSION

    def to_json(self) -> str:
        data = asdict(self)
        data["key"] = {**data["key"], "name": str(self.key)}
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EngineRecord:
        if data.get("schema_version") != ENGINE_SCHEMA_VERSION:
            raise ArtefactError(f"engine.json schema {data.get('schema_version')!r} is not "
                                f"{ENGINE_SCHEMA_VERSION}; rebuild the engine with this embedrt")
        try:
            k = data["key"]
            return cls(
                key=EngineKey(k["flavour"], k["trt_version"], str(k["sm"]), k["precision"]),
                onnx_file=data["onnx_file"],
                onnx_sha256=data["onnx_sha256"],
                plan_sha256=data["plan_sha256"],
                plan_bytes=int(data["plan_bytes"]),
                profiles=tuple(ProfileShape(tuple(p["min"]), tuple(p["opt"]), tuple(p["max"]))  # type: ignore[arg-type]
                               for p in data["profiles"]),
                build=dict(data.get("build") or {}),
                parity=data.get("parity"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtefactError(f"engine.json is malformed ({exc!r}); rebuild the engine") from exc


@dataclass(frozen=True)
class Wanted:
    """What the running machine can use: installed flavours with their versions, and the GPU."""

    flavours: dict[str, str]  # flavour -> TensorRT version string, in preference order
    sm: str
    precision: str = "auto"
    gpu_name: str = "this GPU"


def engines_root(artefact: Path) -> Path:
    return Path(artefact) / ENGINES_DIR


def engine_dir(artefact: Path, key: EngineKey) -> Path:
    return engines_root(artefact) / str(key)


def present_keys(artefact: Path) -> list[str]:
    """Names of the engine directories present (complete or not); hidden staging dirs are skipped."""
    root = engines_root(artefact)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def read_record(directory: Path) -> EngineRecord:
    path = directory / RECORD_NAME
    try:
        record = EngineRecord.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError as exc:
        raise ArtefactError(f"{directory} has no {RECORD_NAME}: an unfinished build; rebuild the engine") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtefactError(f"cannot read {path}: {exc}; rebuild the engine") from exc
    if str(record.key) != directory.name:
        raise ArtefactError(f"{path} describes {record.key}, not {directory.name}; the store was edited by hand")
    return record


def list_engines(artefact: Path) -> list[EngineRecord]:
    """Every readable engine record of the artefact (unreadable ones are left out; see present_keys)."""
    records = []
    for name in present_keys(artefact):
        try:
            records.append(read_record(engines_root(artefact) / name))
        except ArtefactError:
            continue
    return records


def build_command(artefact: Path, precision: str, sm: str, flavour: str) -> str:
    return f"embedrt build {artefact} --precision {precision} --target sm{sm} --flavour {flavour}"


def suggested_flavour(wanted: Wanted) -> str:
    """The flavour to build with for this GPU: an installed one that can target it."""
    for name in wanted.flavours:
        if name == "tensorrt" or wanted.sm in RTX_TARGETS:
            return name
    return "tensorrt"  # e.g. SM90 with only TensorRT-RTX installed: datacenter TensorRT is needed


def select_engine(artefact: Path, manifest: Manifest, wanted: Wanted) -> EngineRecord:
    """The engine for this GPU, TensorRT flavour/version and precision, or EngineMismatchError."""
    records = list_engines(artefact)
    precisions = AUTO_PRECISIONS if wanted.precision == "auto" else (wanted.precision,)
    for precision in precisions:
        for flavour, version in wanted.flavours.items():
            key = EngineKey(flavour, version, wanted.sm, precision)
            for record in records:
                if record.key == key:
                    return record
    if wanted.precision != "auto":
        precision = wanted.precision
    else:
        precision = next((p for p in AUTO_PRECISIONS if p in manifest.graphs), "fp16")
    present = ", ".join(present_keys(artefact)) or "none"
    installed = ", ".join(f"{f} {v}" for f, v in wanted.flavours.items()) or "no TensorRT flavour"
    raise EngineMismatchError(
        f"no TensorRT engine in {artefact} matches {wanted.gpu_name} (sm{wanted.sm}) with {installed} "
        f"at precision {wanted.precision}; engines present: {present}. Build one for this GPU with: "
        f"`{build_command(artefact, precision, wanted.sm, suggested_flavour(wanted))}`"
    )


def device_model_note(record: EngineRecord, gpu_name: str, artefact: Path | str = "ARTEFACT") -> str | None:
    """A warning when a datacenter TensorRT plan was built, and checked, on another GPU model than this.

    TensorRT guarantees a plan only on the device model it was built on: another model of the same
    compute capability (an H100 PCIe plan on an H200) deserialises with TensorRT's "different models
    of devices" warning, and may run slower or fail. The runtime warns rather than refuses, since
    TensorRT itself loads such plans and driver names vary for one GPU, and names the rebuild command.
    TensorRT-RTX plans (built ahead of time without a GPU, kernels finished on the GPU they load on)
    and records without ``built_on_gpu`` have no model to compare.
    """
    built_on = record.build.get("built_on_gpu")
    if record.key.flavour != "tensorrt" or not built_on:
        return None
    name = str(built_on).rpartition(" (sm")[0] or str(built_on)  # recorded as "<name> (sm<cc>)"
    if name.strip() == gpu_name.strip():
        return None
    rebuild = build_command(Path(artefact), record.key.precision, record.key.sm, record.key.flavour)
    return (f"engine {record.key} was built and checked on {name}, not on this {gpu_name}: TensorRT guarantees a "
            f"plan only on the GPU model it was built on (it may run slower or fail here); rebuild it on this GPU "
            f"with `{rebuild}`")


def check_record(artefact: Path, manifest: Manifest, record: EngineRecord) -> None:
    """The engine must come from the ONNX graph the manifest names now, not an older export."""
    graph = manifest.graph(record.key.precision)
    # A flavour that cannot parse the fused graph builds from its eager twin: either is current.
    twin = manifest.eager_graphs.get(record.key.precision)
    if any(g.sha256 == record.onnx_sha256 and g.file == record.onnx_file for g in (graph, twin) if g is not None):
        return
    raise ArtefactError(
        f"engine {record.key} was built from another {record.onnx_file} (sha256 {record.onnx_sha256[:12]}) "
        f"than the artefact's current one ({graph.sha256[:12]}); rebuild it with "
        f"`{build_command(artefact, record.key.precision, record.key.sm, record.key.flavour)}`"
    )


def read_plan(artefact: Path, manifest: Manifest, record: EngineRecord) -> bytes:
    """The plan's bytes after checking them against the record: truncated or corrupt -> ArtefactError."""
    check_record(artefact, manifest, record)
    path = engine_dir(artefact, record.key) / PLAN_NAME
    rebuild = build_command(artefact, record.key.precision, record.key.sm, record.key.flavour)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ArtefactError(f"cannot read {path}: {exc}; rebuild with `{rebuild}`") from exc
    if len(data) != record.plan_bytes:
        raise ArtefactError(f"{path} is truncated or was replaced: {len(data)} bytes, engine.json says "
                            f"{record.plan_bytes}; rebuild with `{rebuild}`")
    if hashlib.sha256(data).hexdigest() != record.plan_sha256:
        raise ArtefactError(f"{path} is corrupt (sha256 differs from engine.json); rebuild with `{rebuild}`")
    return data


def write_engine(artefact: Path, record: EngineRecord, plan: bytes | memoryview,
                 extra: dict[str, bytes] | None = None) -> Path:
    """Install a plan and its record atomically: readers see the old engine or the new, never half."""
    if memoryview(plan).nbytes != record.plan_bytes or sha256_bytes(plan) != record.plan_sha256:
        raise ArtefactError("internal error: the engine record does not describe this plan")
    root = engines_root(artefact)
    root.mkdir(parents=True, exist_ok=True)
    final = root / str(record.key)
    with atomic_directory(final) as staging:
        (staging / PLAN_NAME).write_bytes(plan)
        for name, data in (extra or {}).items():
            (staging / name).write_bytes(data)
        (staging / RECORD_NAME).write_text(record.to_json(), encoding="utf-8")  # last: marks completeness
    return final


def sha256_bytes(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


__all__ = [
    "AUTO_PRECISIONS",
    "ENGINES_DIR",
    "FLAVOURS",
    "PLAN_NAME",
    "RECORD_NAME",
    "RTX_TARGETS",
    "RUNTIME_CACHE_NAME",
    "EngineKey",
    "EngineRecord",
    "ProfileShape",
    "Wanted",
    "build_command",
    "check_record",
    "device_model_note",
    "engine_dir",
    "engines_root",
    "list_engines",
    "present_keys",
    "read_plan",
    "read_record",
    "select_engine",
    "sha256_bytes",
    "suggested_flavour",
    "write_engine",
]
