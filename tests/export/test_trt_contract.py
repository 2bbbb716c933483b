"""Every TensorRT class, method, enum and attribute our builder and runtime backend use exists, with a
compatible signature, in the real datacenter bindings (``tensorrt-cu12-bindings`` 10.x and 11.x) and
in the installed TensorRT-RTX, and the fakes that stand in for datacenter TensorRT in other tests
(``trt_builder_fakes``) have the same names and parameters as what they fake.

This is a contract test, not an execution test: the datacenter bindings are loaded against stand-in
libraries (``trt_bindings.py``), so nothing here creates a TensorRT object, builds or runs an engine.
It proves the calls would bind; what they do is for tests/gpu on a real GPU.

The uses are read from the code (its AST), not listed by hand: each attribute of a TensorRT object is
resolved through the receiver table below, which says which TensorRT class a variable holds. A new
variable that uses TensorRT names without being in the table (or in ``OURS``) fails the test, so the
table cannot silently fall behind the code. A use is optional (checked only where it exists) when
the code guards it with ``hasattr`` / ``getattr`` by name, or when its class is marked optional
(``?``). ``RtxFlavour`` runs only with TensorRT-RTX, so its uses are checked against that alone.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trt_builder_fakes

ROOT = Path(__file__).resolve().parents[2]
BINDINGS = ROOT / "build" / "trt-bindings"  # filled by `make test` (trt_bindings.py prepare)
HELPER = Path(__file__).with_name("trt_bindings.py")
MODULE = ""  # the receiver is the TensorRT module itself

# Receiver (its source text) -> the TensorRT class it holds, per file. "X?" : only where X exists.
RECEIVERS: dict[str, dict[str, str]] = {
    "export/src/embedrt_export/trt/build.py": {
        "trt": MODULE, "builder": "Builder", "net.builder": "Builder", "network": "INetworkDefinition",
        "net.network": "INetworkDefinition", "parser": "OnnxParser", "config": "IBuilderConfig",
        "shape": "IOptimizationProfile", "cache": "ITimingCache", "err": "ParserError", "layer": "ILayer",
        "network.get_input(i)": "ITensor", "attention": "IAttention?", "a": "IAttention?",
    },
    "export/src/embedrt_export/trt/flavours.py": {
        "self.trt": MODULE, "config": "IBuilderConfig",
    },
    "export/src/embedrt_export/trt/progress.py": {"trt": MODULE},
    "runtime/src/embedrt/backends/trt_loader.py": {
        "trt": MODULE, "runtime": "Runtime", "engine": "ICudaEngine",
        "config": "IRuntimeConfig?", "cache": "IRuntimeCache?", "config.get_runtime_cache()": "IRuntimeCache?",
        "strategy": "CudaGraphStrategy?",
    },
    "runtime/src/embedrt/backends/trt_slots.py": {"engine": "ICudaEngine", "ctx": "IExecutionContext"},
    "runtime/src/embedrt/backends/tensorrt.py": {},
}
# Receivers in those files that hold our own objects although they use names TensorRT also has.
OURS = {"self", "self.config", "self.stream", "self._cond", "self._free", "self._busy", "self.errors", "flavour",
        "net", "logger", "net.logger", "logger.errors", "record", "record.key", "self.record", "self.record.key",
        "key", "graph", "manifest", "options", "gpu", "self.gpu", "profile", "p", "path", "old_cache", "built",
        "slot", "part", "part.slot", "part.slot.stream", "pool", "job", "jobs", "batch", "buffer", "stream",
        "super()", "np", "onnx", "cuda", "time", "tmp", "io", "shapes", "inflight", "self.profiles[i]",
        "self.limits()", "self.host[name]", "self.io[name]", "m", "fp16", "parse_path", "onnx_path", "done",
        "thread", "threading", "self.levels", "device", "host", "jobs[0]", "jobs[-1]", "self._slots", "lines",
        "found", "installed", "targets", "dtype", "onnx.shape_inference", "inputs[INPUTS[0]]", "inputs['input_ids']",
        "slots", "plan"}
# Classes only reached where the code has checked for them by other means.
OPTIONAL = {"IAttentionOutputLayer": "reached only where LayerType.ATTENTION_OUTPUT exists (TensorRT 10.14+)"}
RTX_ONLY_SCOPES = ("RtxFlavour",)


@dataclass
class Use:
    id: str
    path: list[str]
    kind: str  # read, write, call, override
    positional: int = 0
    keywords: list[str] = field(default_factory=list)
    optional: bool = False
    rtx_only: bool = False

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "path": self.path, "kind": self.kind, "positional": self.positional,
                "keywords": self.keywords}


def _guarded_names(tree: ast.AST) -> set[str]:
    """Names the code looks up with hasattr / getattr: it copes when they are missing."""
    names = set()
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("hasattr", "getattr")
                and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)):
            names.add(str(node.args[1].value))
    return names


def _chain(node: ast.expr, table: dict[str, str]) -> list[str] | None:
    """The TensorRT path of an attribute expression (["ILogger", "Severity", "ERROR"]), or None."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.insert(0, node.attr)
        held = table.get(ast.unparse(node.value))
        if held is not None:
            return ([held.rstrip("?")] if held else []) + parts
        node = node.value
    return None


def scan(relative: str, table: dict[str, str], strangers: list[str]) -> list[Use]:
    """The TensorRT uses of one source file; receivers neither in ``table`` nor ``OURS`` that use a
    name some TensorRT class has are appended to ``strangers``."""
    tree = ast.parse((ROOT / relative).read_text(encoding="utf-8"))
    guarded = _guarded_names(tree)
    optional_classes = {cls.rstrip("?") for cls in table.values() if cls.endswith("?")}
    tensorrt_names = _tensorrt_member_names()
    uses: list[Use] = []
    parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}

    def scope_of(node: ast.AST) -> str:
        names = []
        while node in parents:
            node = parents[node]
            if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
                names.insert(0, node.name)
        return ".".join(names)

    def add(node: ast.AST, path: list[str], kind: str, positional: int = 0, keywords: list[str] | None = None) -> None:
        scope = scope_of(node)
        optional = (path[-1] in guarded or path[0] in optional_classes or path[0] in OPTIONAL
                    or bool(set(path) & guarded))
        uses.append(Use(f"{relative.rsplit('/', 1)[-1]}:{node.lineno} ({scope}) {'.'.join(path)} {kind}", path,
                        kind, positional, keywords or [], optional, scope.startswith(RTX_ONLY_SCOPES)))

    # ``obj.__class__ = trt.X`` (the bindings hand out a base class): later uses of obj in that scope are X's.
    retyped: dict[tuple[str, str], tuple[int, str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Attribute) \
                and node.targets[0].attr == "__class__" and (cls := _chain(node.value, table)):
            retyped[(scope_of(node), ast.unparse(node.targets[0].value))] = (node.lineno, cls[0])

    def resolve(node: ast.Attribute) -> list[str] | None:
        after = retyped.get((scope_of(node), ast.unparse(node.value)))
        if after is not None and node.lineno > after[0]:
            return [after[1], node.attr]
        return _chain(node, table)

    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):  # subclasses of TensorRT interfaces: overridden methods
            for base in node.bases:
                path = _chain(base, table)
                if path:
                    add(node, path, "read")
                    for item in node.body:
                        if isinstance(item, ast.FunctionDef) and not item.name.startswith("__"):
                            add(item, [*path, item.name], "override", len(item.args.args) - 1)
        if not isinstance(node, ast.Attribute):
            continue
        if node.attr == "__class__":
            continue  # the retyping itself
        path = resolve(node)
        if path is None:
            receiver = ast.unparse(node.value)
            if receiver not in OURS and node.attr in tensorrt_names and not _is_tensorrt_prefix(node, table):
                strangers.append(f"{relative}:{node.lineno}: {receiver}.{node.attr}")
            continue
        if not path:
            continue
        parent = parents.get(node)
        if isinstance(parent, ast.Call) and parent.func is node:
            positional = len(parent.args) - (1 if path[-1] == "__init__" else 0)  # Base.__init__(self)
            add(node, path, "call", positional, [k.arg for k in parent.keywords if k.arg])
        elif isinstance(node.ctx, ast.Store):
            add(node, path, "write")
        elif not isinstance(parent, ast.Attribute):  # a longer chain is recorded by its outer node
            add(node, path, "read")
    return uses


def _is_tensorrt_prefix(node: ast.Attribute, table: dict[str, str]) -> bool:
    return any(ast.unparse(node).startswith(r + ".") or ast.unparse(node) == r for r in table)


_MEMBERS: set[str] = set()


def _tensorrt_member_names() -> set[str]:
    """Every member name of a TensorRT-RTX class (installed): what makes a receiver look like TensorRT."""
    if not _MEMBERS:
        import tensorrt_rtx_bindings as rtx

        for name, cls in vars(rtx).items():
            if inspect.isclass(cls) and not name.startswith("_"):
                _MEMBERS.update(m for m in vars(cls) if not m.startswith("_"))
    return _MEMBERS


def all_uses() -> list[Use]:
    strangers: list[str] = []
    uses = [u for relative, table in RECEIVERS.items() for u in scan(relative, table, strangers)]
    assert not strangers, ("receivers that use TensorRT names but are in neither RECEIVERS nor OURS; "
                           "say which TensorRT class each holds:\n  " + "\n  ".join(strangers))
    unique = {(tuple(u.path), u.kind, u.positional, tuple(u.keywords), u.optional, u.rtx_only): u for u in uses}
    return list(unique.values())


def _check(where: str, uses: list[Use]) -> dict[str, Any]:
    done = subprocess.run([sys.executable, str(HELPER), "check", where], input=json.dumps([u.as_json() for u in uses]),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def _failures(result: dict[str, Any], uses: list[Use]) -> list[str]:
    by_id = {u.id: u for u in uses}
    return [f"{uid}: {why}" for uid, why in result["problems"].items()
            if not (by_id[uid].optional and why.endswith("does not exist"))]


def _datacenter_versions() -> list[Path]:
    found = sorted(p.parent.parent for p in BINDINGS.glob("*/tensorrt_bindings/__init__.py"))
    majors = {p.name.split(".")[0] for p in found}
    if not {"10", "11"} <= majors:
        pytest.skip(f"the datacenter TensorRT bindings (10.x and 11.x) are not prepared under {BINDINGS} "
                    f"(found: {[p.name for p in found] or 'none'}); `make test` fetches them during setup, or run "
                    f"`python tests/export/trt_bindings.py prepare {BINDINGS.relative_to(ROOT)} 10.0.1 11.4.0.106`")
    return found


def test_the_scan_finds_the_calls_we_know_we_make() -> None:
    paths = {(".".join(u.path), u.kind) for u in all_uses()}
    for expected in (("Builder", "call"), ("IBuilderConfig.set_timing_cache", "call"),
                     ("IBuilderConfig.clear_flag", "call"),
                     ("IExecutionContext.execute_async_v3", "call"), ("ICudaEngine.num_io_tensors", "read"),
                     ("ILogger.Severity.ERROR", "read"), ("ILogger.log", "override"),
                     ("IBuilderConfig.progress_monitor", "write"), ("IBuilderConfig.num_compute_capabilities", "write"),
                     ("IProgressMonitor.phase_start", "override"), ("OnnxParser.parse_from_file", "call")):
        assert expected in paths, expected
    assert len(paths) > 50


@pytest.mark.parametrize("which", ["10", "11"])
def test_datacenter_bindings_offer_every_call_we_make(which: str) -> None:
    location = next(p for p in _datacenter_versions() if p.name.split(".")[0] == which)
    uses = [u for u in all_uses() if not u.rtx_only]
    result = _check(str(location), uses)
    assert result["version"] == location.name
    failures = _failures(result, uses)
    assert not failures, f"TensorRT {location.name} lacks:\n  " + "\n  ".join(failures)


@pytest.mark.trt
def test_tensorrt_rtx_offers_every_call_we_make() -> None:
    if importlib.util.find_spec("tensorrt_rtx_bindings") is None:
        pytest.skip("TensorRT-RTX is not installed: pip install 'embedrt-export[tensorrt-rtx]'")
    uses = all_uses()
    failures = _failures(_check("tensorrt_rtx_bindings", uses), uses)
    assert not failures, "TensorRT-RTX lacks:\n  " + "\n  ".join(failures)


def _fake_uses() -> list[Use]:
    """Each public method / attribute of each fake, as a use of the real class it stands in for."""
    uses = []
    for fake in trt_builder_fakes.FAKES:
        for name, member in vars(fake).items():
            if name.startswith("_") or name == "REAL" or name == "parse":
                continue
            if callable(member):
                params = list(inspect.signature(member).parameters)[1:]
                uses.append(Use(f"{fake.__name__}.{name}", [fake.REAL, name], "call", len(params)))
                uses.append(Use(f"{fake.__name__}.{name} by name", [fake.REAL, name], "call", 0, params))
            else:
                uses.append(Use(f"{fake.__name__}.{name}", [fake.REAL, name], "read"))
    config = trt_builder_fakes.IBuilderConfig("x")  # instance attributes the builder writes
    uses.append(Use("IBuilderConfig.progress_monitor", ["IBuilderConfig", "progress_monitor"], "write"))
    assert hasattr(config, "progress_monitor")
    return uses


@pytest.mark.parametrize("which", ["10", "11"])
def test_the_datacenter_fakes_match_the_real_classes(which: str) -> None:
    location = next(p for p in _datacenter_versions() if p.name.split(".")[0] == which)
    uses = _fake_uses()
    failures = _failures(_check(str(location), uses), uses)
    assert not failures, f"trt_builder_fakes differs from TensorRT {location.name}:\n  " + "\n  ".join(failures)


def test_the_check_catches_what_does_not_bind() -> None:
    location = next(p for p in _datacenter_versions() if p.name.startswith("11."))
    wrong = [Use("missing", ["IBuilderConfig", "set_timing_cash"], "call", 2),
             Use("too many", ["IBuilderConfig", "set_timing_cache"], "call", 3),
             Use("bad keyword", ["IBuilderConfig", "set_timing_cache"], "call", 1, ["ignore"]),
             Use("read-only", ["ICudaEngine", "num_io_tensors"], "write"),
             Use("no enum member", ["BuilderFlag", "FP16"], "read")]  # removed in TensorRT 11 (strong typing)
    right = [Use("by keyword", ["IBuilderConfig", "set_timing_cache"], "call", 1, ["ignore_mismatch"])]
    problems = _check(str(location), wrong + right)["problems"]
    assert set(problems) == {u.id for u in wrong}, problems
