"""``embedrt build``: the artefact's ONNX graph -> one TensorRT plan per target GPU, in the engine store.

Precision comes from the graph (TensorRT 11 and TensorRT-RTX are strongly typed): ``fp16`` builds
``model.fp16.onnx`` with its FP32 islands, ``int8`` the Q/DQ graph of ``embedrt quantize``. Each plan
is checked on the GPU when the build runs on the GPU it targets (engine vs ONNX Runtime FP32) and is
installed only if it passes; plans built ahead of time for other GPUs are recorded as unchecked.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from embedrt.backends.trt_loader import make_logger
from embedrt.config import BatchingConfig
from embedrt.engines import (
    CONTEXTS,
    EngineKey,
    EngineRecord,
    ProfileShape,
    engine_dir,
    sha256_bytes,
    write_engine,
)
from embedrt.errors import BackendError
from embedrt.manifest import GraphFile, Manifest, load_manifest

from ..errors import ExportError
from ..export.source import file_sha256
from .flavours import BuilderFlavour, load_flavour
from .profiles import default_profiles, parse_profiles, with_copies
from .progress import heartbeat, progress_monitor

Log = Callable[[str], None]
INPUTS = ("input_ids", "attention_mask")
TIMING_CACHE_NAME = "timing.cache"


@dataclass(frozen=True)
class BuildOptions:
    precisions: tuple[str, ...] = ("fp16",)
    targets: tuple[str, ...] | None = None  # compute capabilities ("89"); None: the GPU here
    flavour: str | None = None  # None: tensorrt where installed, else tensorrt-rtx
    profiles: str | None = None  # the --profiles spec; None: from the batching buckets
    contexts: int = CONTEXTS  # copies of each profile, so that many contexts can run one bucket at once
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    verify: bool = True  # on a GPU, for the plan that targets it
    # INT8 engines: the dtype of everything the Q/DQ graph leaves unquantized. "fp16" builds from an
    # INT8 + FP16 copy (fp16.convert_qdq_to_fp16: FP16 where the FP16 graph is, same FP32 islands);
    # "fp32" from the artefact's Q/DQ graph as it is.
    int8_float: str = "fp16"
    # auto: the artefact's default graph (fused where exported), its eager twin where the installed
    # flavour cannot parse the fused one; fused / eager: that graph or fail.
    attention: str = "auto"


@dataclass
class _Network:
    """Builder objects that must stay alive together (the network references the parser's weights)."""

    logger: Any
    builder: Any
    network: Any
    parser: Any
    inputs: tuple[str, ...] = INPUTS  # the graph's inputs in order (a cross-encoder adds token_type_ids)


def current_gpu() -> Any | None:
    """The GPU here (``embedrt.backends.cuda.GpuInfo``), or None without cuda-python / driver / GPU."""
    from embedrt.backends import cuda

    try:
        return cuda.gpu_info(0)
    except BackendError:
        return None


def parse_network(flavour: BuilderFlavour, onnx_path: Path) -> _Network:
    """Parse the ONNX graph; any node TensorRT cannot import fails the build, listing each one."""
    trt = flavour.trt
    logger = make_logger(trt)
    logger.errors.clear()
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):  # TensorRT 10 needs it; 11 / RTX always are
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse_from_file(str(onnx_path))
    errors = onnx_errors(parser)
    if not ok or errors:
        listed = "\n  ".join(errors) or "; ".join(logger.errors) or "no detail"
        raise ExportError(f"{flavour.name} {flavour.version} cannot parse {onnx_path.name}:\n  {listed}")
    names = tuple(network.get_input(i).name for i in range(network.num_inputs))
    if not set(INPUTS) <= set(names):
        raise ExportError(f"{onnx_path.name} lacks inputs {sorted(set(INPUTS) - set(names))}; re-export the model")
    return _Network(logger, builder, network, parser, names)


def onnx_errors(parser: Any) -> list[str]:
    """One line per parser error: node name, operator and TensorRT's description."""
    lines = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        lines.append(f"node {err.node_name() or err.node()} ({err.node_operator() or '?'}): {err.desc()}")
    return lines


@dataclass(frozen=True)
class BuiltPlan:
    """One serialised plan, the timing cache to store beside it, and what the builder config did."""

    plan: memoryview
    timing_cache: bytes | None
    facts: dict[str, Any]  # recorded in engine.json's build: tf32, timing_cache


def configure_precision(trt: Any, config: Any, precision: str) -> bool | None:
    """Clear TF32 for FP32 engines; return whether TF32 is on (None: this TensorRT has no such flag).

    TF32 is on by default (datacenter TensorRT on Ampere and newer, and TensorRT-RTX): FP32 matrix
    multiplies would then run with a 10-bit mantissa, and an "FP32" engine would miss FP32's parity gate.
    Strong typing does not turn it off. FP16 / INT8 graphs keep it for their few FP32 islands.
    """
    flag = getattr(getattr(trt, "BuilderFlag", None), "TF32", None)
    if flag is None:
        return None
    if precision == "fp32":
        config.clear_flag(flag)
    return bool(config.get_flag(flag))


def attach_timing_cache(config: Any, stored: bytes | None, log: Log) -> tuple[Any, str]:
    """The timing cache the build tunes into, and how it came about: new, reused or replaced.

    ``ignore_mismatch=False``: TensorRT refuses a cache made on another GPU model or TensorRT
    version (timings from another device would mislead tactic choice). A refused cache is dropped for
    a fresh one, so that what is written back afterwards is this device's, not the stale bytes.
    """
    cache = config.create_timing_cache(stored or b"")
    if config.set_timing_cache(cache, False):
        return cache, "reused" if stored else "new"
    log("  the stored timing cache was made on another GPU model or TensorRT version and was not used; "
        "tuning from a fresh cache, which replaces it")
    cache = config.create_timing_cache(b"")
    if not config.set_timing_cache(cache, False):
        raise ExportError("TensorRT refused a fresh timing cache")
    return cache, "replaced (the stored cache was from another GPU model or TensorRT version)"


def build_plan(flavour: BuilderFlavour, net: _Network, profiles: tuple[ProfileShape, ...], key: EngineKey,
               current_sm: str | None, timing_cache: bytes | None, log: Log) -> BuiltPlan:
    """Serialise one plan for ``key``'s compute capability and precision."""
    trt, sm = flavour.trt, key.sm
    config = net.builder.create_builder_config()
    flavour.configure_target(config, sm, current_sm)
    facts: dict[str, Any] = {"tf32": configure_precision(trt, config, key.precision)}
    for profile in profiles:
        shape = net.builder.create_optimization_profile()
        for name in net.inputs:  # every [batch, sequence] input takes the profile's shapes
            shape.set_shape(name, profile.min, profile.opt, profile.max)
        if config.add_optimization_profile(shape) < 0:
            raise ExportError(f"TensorRT rejected profile {profile.describe()}")
    cache = None
    if flavour.timing_cache:
        cache, facts["timing_cache"] = attach_timing_cache(config, timing_cache, log)
    else:
        facts["timing_cache"] = f"not supported by {flavour.name}"
    monitor = progress_monitor(trt, log)
    if monitor is not None:
        config.progress_monitor = monitor
        serialized = net.builder.build_serialized_network(net.network, config)
    else:
        with heartbeat(log, f"building sm{sm}"):
            serialized = net.builder.build_serialized_network(net.network, config)
    if serialized is None:
        why = "; ".join(net.logger.errors) or "see TensorRT's log above"
        raise ExportError(f"{flavour.name} could not build an engine for sm{sm}: {why}")
    # A view, not bytes(): a plan is as large as the weights, and a copy would double peak memory.
    return BuiltPlan(memoryview(serialized).cast("B"), bytes(cache.serialize()) if cache is not None else None,
                     facts)


def _profiles(manifest: Manifest, options: BuildOptions) -> tuple[ProfileShape, ...]:
    base = (parse_profiles(options.profiles, manifest.max_length, options.batching) if options.profiles
            else default_profiles(manifest.max_length, options.batching))
    return with_copies(base, options.contexts)


def _candidates(manifest: Manifest, precision: str, attention: str) -> list[GraphFile]:
    """The graphs to try for ``precision``, in order: the chosen one, then (auto) its eager twin."""
    if attention not in ("auto", "fused", "eager"):
        raise ExportError(f"--attention {attention!r}: choose auto, fused or eager")
    graph = manifest.graph(precision, attention)  # ArtefactError naming the command that makes a missing graph
    twin = manifest.eager_graphs.get(precision)
    return [graph, twin] if attention == "auto" and graph.attention == "fused" and twin is not None else [graph]


def _checked_graph(artefact: Path, graph: GraphFile) -> tuple[Path, str]:
    path = artefact / graph.file
    if not path.is_file():
        raise ExportError(f"{path} is missing; the artefact is incomplete, re-export the model")
    if file_sha256(path) != graph.sha256:
        raise ExportError(f"{path} differs from the manifest's checksum; re-export (or re-quantize) the model")
    return path, graph.sha256


@contextmanager
def _graph_to_parse(root: Path, onnx_path: Path, precision: str, options: BuildOptions,
                    log: Log, plan: str = "full") -> Iterator[Path]:
    """The graph TensorRT should parse: the artefact's own, or for INT8 + FP16 a converted copy in
    a hidden temporary directory of the artefact, removed once that precision's plans are built."""
    if precision != "int8" or options.int8_float == "fp32":
        yield onnx_path
        return
    import onnx
    from onnx.external_data_helper import load_external_data_for_model

    from ..export import onnx_export
    from ..fp16 import convert_qdq_to_fp16

    started = time.perf_counter()
    model = onnx.shape_inference.infer_shapes(onnx.load(str(onnx_path), load_external_data=False))
    load_external_data_for_model(model, str(onnx_path.parent))
    convert_qdq_to_fp16(model, plan)
    with tempfile.TemporaryDirectory(prefix=".int8-fp16-", dir=root) as tmp:
        path = Path(tmp) / onnx_path.name
        onnx_export.save(model, path)
        del model
        log(f"INT8 + FP16: unquantized ops to FP16 outside the FP32 islands "
            f"({time.perf_counter() - started:.1f} s; --int8-float fp32 keeps them FP32)")
        yield path


def build_engines(artefact: str | Path, options: BuildOptions = BuildOptions(), log: Log = print) -> list[EngineRecord]:
    """Build, check and install one engine per (precision, target). Returns the installed records."""
    if options.int8_float not in ("fp16", "fp32"):
        raise ExportError(f"--int8-float {options.int8_float!r}: choose fp16 or fp32")
    root = Path(artefact)
    manifest = load_manifest(root)
    flavour = load_flavour(options.flavour)
    gpu = current_gpu()
    current_sm = gpu.sm if gpu else None
    targets = flavour.resolve_targets(options.targets, current_sm)
    profiles = _profiles(manifest, options)
    graphs = {precision: _candidates(manifest, precision, options.attention) for precision in options.precisions}
    for candidates in graphs.values():
        for graph in candidates:
            _checked_graph(root, graph)
    log(f"{flavour.name} {flavour.version}: targets {', '.join('sm' + t for t in targets)}; "
        f"profiles {', '.join(p.describe() for p in profiles)}"
        + (f"; GPU here: {gpu.name} (sm{gpu.sm})" if gpu else "; no GPU here (ahead-of-time build)"))
    installed = []
    for precision in options.precisions:
        with _parsed(root, manifest, graphs[precision], precision, flavour, options, log) as (graph, net, notes):
            onnx_sha = graph.sha256
            for sm in targets:
                key = EngineKey(flavour.name, flavour.version, sm, precision)
                old_cache = engine_dir(root, key) / TIMING_CACHE_NAME
                started = time.perf_counter()
                log(f"building {key}")
                built = _build_attention_aware(flavour, net, profiles, key, current_sm,
                                               old_cache.read_bytes() if old_cache.is_file() else None, notes, log)
                plan = built.plan
                seconds = round(time.perf_counter() - started, 2)
                log(f"  plan {len(plan) / 2**20:.1f} MiB in {seconds:.1f} s")
                build = {
                    "flavour_version": flavour.version, "target": f"sm{sm}", "seconds": seconds,
                    "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "profiles_spec": options.profiles or "default", "contexts": options.contexts,
                    "batching": asdict(options.batching), "layers": int(net.network.num_layers),
                    "built_on_gpu": f"{gpu.name} (sm{gpu.sm})" if gpu else None,
                    "attention": graph.attention, **built.facts, **notes,
                }
                if precision == "int8":
                    build["int8_float"] = options.int8_float
                record = EngineRecord(key, graph.file, onnx_sha, sha256_bytes(plan), len(plan), profiles, build)
                record = _verified(root, manifest, flavour, record, plan, options, current_sm, log)
                extra = {TIMING_CACHE_NAME: built.timing_cache} if built.timing_cache else None
                write_engine(root, record, plan, extra)
                log(f"installed {engine_dir(root, key)}")
                installed.append(record)
    return installed


@contextmanager
def _parsed(root: Path, manifest: Manifest, candidates: list[GraphFile], precision: str, flavour: BuilderFlavour,
            options: BuildOptions, log: Log) -> Iterator[tuple[GraphFile, _Network, dict[str, Any]]]:
    """The first candidate graph the flavour parses (the fused one, else its eager twin, saying why)."""
    notes: dict[str, Any] = {}
    for i, graph in enumerate(candidates):
        with _graph_to_parse(root, root / graph.file, precision, options, log, _fp16_plan(manifest, graph)) \
                as parse_path:
            log(f"parsing {parse_path.name} ({graph.attention} attention)")
            try:
                net = parse_network(flavour, parse_path)
            except ExportError as exc:
                if i == len(candidates) - 1:
                    raise
                log(f"  {flavour.name} {flavour.version} cannot take the {graph.attention} graph; building from "
                    f"its eager twin instead. Reason: {exc}")
                notes["fallback"] = f"{graph.file}: {exc}"[:2000]
                continue
            yield graph, net, notes
            return


def _fp16_plan(manifest: Manifest, graph: GraphFile) -> str:
    """The FP32 islands an INT8 + FP16 copy keeps: those the FP16 graph of the same form passed its
    parity gate with (the lean plan only ever for fused graphs)."""
    fp16 = manifest.graphs.get("fp16")
    if graph.attention != "fused" or fp16 is None or fp16.attention != "fused":
        return "full"
    return str(fp16.parity.get("fp32_islands", "full"))


def attention_layers(flavour: BuilderFlavour, network: Any) -> list[Any]:
    """The network's fused attention (IAttention) objects, one per ONNX ``Attention`` node."""
    trt = flavour.trt
    kind = getattr(getattr(trt, "LayerType", None), "ATTENTION_OUTPUT", None)
    found: list[Any] = []
    if kind is None:
        return found
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type == kind:
            layer.__class__ = trt.IAttentionOutputLayer  # the bindings hand out the base class
            found.append(layer.attention)
    return found


def _build_attention_aware(flavour: BuilderFlavour, net: _Network, profiles: tuple[ProfileShape, ...],
                           key: EngineKey, current_sm: str | None, timing_cache: bytes | None,
                           notes: dict[str, Any], log: Log) -> BuiltPlan:
    """``build_plan``; where TensorRT has no dedicated attention kernel for the graph's dtype or shape
    (FP32 attention, for one), mark the attention layers decomposable and build again."""
    try:
        return build_plan(flavour, net, profiles, key, current_sm, timing_cache, log)
    except ExportError as exc:
        layers = attention_layers(flavour, net.network)
        if "decomposable" not in str(exc) or not layers or all(a.decomposable for a in layers):
            raise
        for attention in layers:
            attention.decomposable = True
        log(f"  no dedicated attention kernel for this graph on sm{key.sm}: {len(layers)} attention layers marked "
            "decomposable (TensorRT runs them as separate matrix multiplies and softmax)")
        notes["attention_decomposed"] = True
        return build_plan(flavour, net, profiles, key, current_sm, timing_cache, log)


def _verified(root: Path, manifest: Manifest, flavour: BuilderFlavour, record: EngineRecord, plan: memoryview,
              options: BuildOptions, current_sm: str | None, log: Log) -> EngineRecord:
    """The record with its parity report, or unchanged with the reason no GPU checked it."""
    from dataclasses import replace

    if record.key.sm != current_sm or not options.verify:
        reason = ("verification turned off (--no-verify)" if not options.verify
                  else f"built ahead of time; no sm{record.key.sm} GPU here to run it")
        log(f"  not checked on a GPU: {reason}")
        return replace(record, build={**record.build, "parity_skipped": reason})
    from .verify import check, verify_plan

    report = verify_plan(root, manifest, flavour.trt, record, plan, log)
    check(report)  # ParityError: the engine is not installed
    return replace(record, parity=report)


__all__ = ["BuildOptions", "BuiltPlan", "attach_timing_cache", "attention_layers", "build_engines", "build_plan",
           "configure_precision", "current_gpu", "onnx_errors", "parse_network"]
