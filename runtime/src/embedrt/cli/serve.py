"""``embedrt serve ARTEFACT [ARTEFACT ...]``: gRPC (+ HTTP) with cross-request batching, one or more
models (embedders and rerankers, each loaded as its manifest's task says) in one process; with
``--ray [ADDRESS]``, HTTP (and gRPC with ``--grpc-port``) from replicas of each model on a Ray
cluster (``server/ray_serve.py``).

Every flag is also read from an ``EMBEDRT_*`` environment variable (``--max-batch-tokens`` from
``EMBEDRT_MAX_BATCH_TOKENS``; the artefacts from ``EMBEDRT_ARTEFACT``, comma-separated); a flag or
artefact given on the command line wins. ``OPTIONS`` below is the one place where flags and variables
map onto the configuration dataclasses, and the dataclasses hold the defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import BackendConfig, BatchingConfig, RayServeConfig, SchedulerConfig, ServerConfig
from ..errors import ConfigError, EmbedrtError

_SECTIONS: dict[str, Any] = {"server": ServerConfig, "scheduler": SchedulerConfig, "batching": BatchingConfig,
                             "backend": BackendConfig, "ray": RayServeConfig}
_NO_TLS_ON_RAY = ("tls_cert", "tls_key")  # flags (dest) --ray refuses: Serve's gRPC proxy has no TLS
_LOAD_DEFAULTS = {"backend": "auto", "precision": "auto"}  # Embedder.load arguments


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _http_port(port: int) -> int | None:
    return None if port == 0 else port  # 0 turns HTTP off (gRPC port 0 means any free port)


def _same(value: Any) -> Any:
    return value


def _ray_address(text: str) -> str | None:
    """EMBEDRT_RAY (or --ray ADDRESS): true = find or start a cluster (""), false = not on Ray, else an address."""
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on", ""):
        return ""
    return None if lowered in ("0", "false", "no", "off") else text.strip()


def _replicas(text: str) -> int | str:
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of replicas or auto, got {text!r}") from None


@dataclass(frozen=True)
class Option:
    flag: str
    targets: tuple[str, ...]  # "section.field"; section "load" is an Embedder.load argument
    type: Callable[[str], Any]
    help: str
    to_config: Callable[[Any], Any] = _same  # flag value -> dataclass value
    const: Any = None  # not None: the value may be left out (`--ray` alone), meaning this

    @property
    def env(self) -> str:
        return "EMBEDRT_" + self.flag.removeprefix("--").upper().replace("-", "_")

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")

    def default(self) -> Any:
        section, name = self.targets[0].split(".")
        if section == "load":
            return _LOAD_DEFAULTS[name]
        return {f.name: f.default for f in dataclasses.fields(_SECTIONS[section])}[name]


OPTIONS: tuple[Option, ...] = (
    Option("--host", ("server.host",), str, "address to bind; 0.0.0.0 or :: to expose beyond this machine"),
    Option("--grpc-port", ("server.grpc_port",), int,
           "gRPC port (0: any free port); with --ray, Serve's gRPC proxy port, on every interface (no gRPC on Ray "
           "without it)"),
    Option("--http-port", ("server.http_port",), int, "OpenAI-compatible HTTP port (0: no HTTP)", _http_port),
    Option("--tls-cert", ("server.tls_cert",), str, "PEM certificate for gRPC TLS (with --tls-key)"),
    Option("--tls-key", ("server.tls_key",), str, "PEM private key for gRPC TLS (with --tls-cert)"),
    Option("--max-message-bytes", ("server.max_message_bytes",), int, "largest request accepted, in bytes"),
    Option("--body-timeout", ("server.body_timeout_s",), float,
           "HTTP: seconds a request body may take to arrive before 408 (0: no limit)"),
    Option("--grace", ("server.grace_s",), float, "seconds admitted requests may take to finish on SIGTERM"),
    Option("--reflection", ("server.reflection",), _bool, "gRPC server reflection (true/false)"),
    Option("--warmup", ("server.warmup",), _bool, "run one batch before reporting SERVING (true/false)"),
    Option("--backend", ("load.backend",), str, "auto | onnxruntime | tensorrt"),
    Option("--precision", ("load.precision",), str, "auto | fp32 | fp16 | int8"),
    Option("--device", ("backend.device",), str, "auto | cpu | cuda"),
    Option("--device-id", ("backend.device_id",), int, "GPU index"),
    Option("--intra-op-threads", ("backend.intra_op_threads",), int, "backend CPU threads (0: all cores)"),
    Option("--cuda-graphs", ("backend.cuda_graphs",), _bool,
           "capture input shapes into CUDA graphs and replay them: TensorRT-RTX (every shape), ONNX Runtime "
           "CUDA (short shapes, see --cuda-graph-max-tokens) (true/false)"),
    Option("--cuda-graph-max-tokens", ("backend.cuda_graph_max_tokens",), int,
           "ONNX Runtime CUDA: largest padded rows x sequence captured into a CUDA graph"),
    Option("--attention", ("backend.attention",), str,
           "auto | fused | eager: which form of the graph to run (auto: the artefact's default, fused where "
           "exported; eager: its eager twin)"),
    Option("--max-batch-tokens", ("scheduler.max_batch_tokens", "batching.max_batch_tokens"), int,
           "tokens merged into one backend call across requests"),
    Option("--max-batch-size", ("batching.max_batch_size",), int, "rows per backend run"),
    Option("--max-batch-requests", ("scheduler.max_batch_requests",), int,
           "requests merged into one backend call (1: no dynamic batching)"),
    Option("--max-wait-us", ("scheduler.max_wait_us",), int,
           "microseconds the oldest queued request may wait for others to join its batch"),
    Option("--max-queue", ("scheduler.max_queued_requests",), int,
           "requests admitted and unanswered before new ones get RESOURCE_EXHAUSTED / 429"),
    Option("--max-queue-tokens", ("scheduler.max_queued_tokens",), int,
           "tokens waiting for the backend before new requests get RESOURCE_EXHAUSTED / 429"),
    Option("--max-inputs", ("scheduler.max_inputs_per_request",), int,
           "texts per embedding request, documents per rerank request"),
    Option("--tokenizer-threads", ("scheduler.tokenizer_threads",), int, "threads tokenizing requests"),
    Option("--ray", ("ray.address",), _ray_address,
           "serve on Ray Serve: HTTP (and gRPC with --grpc-port) from replicas of each model across a Ray "
           "cluster; ADDRESS as "
           "ray.init takes it: none = RAY_ADDRESS or the cluster started last on this machine or a new local one, "
           "auto, HOST:6379, ray://HOST:10001 (the artefacts must be paths every node reads, or URLs each fetches)",
           lambda address: address or None, const=""),
    Option("--replicas", ("ray.replicas",), _replicas,
           "--ray: replicas of each model, or auto (between --min-replicas and --max-replicas, on ongoing requests)"),
    Option("--min-replicas", ("ray.min_replicas",), int, "--ray --replicas auto: fewest replicas of each model"),
    Option("--max-replicas", ("ray.max_replicas",), int, "--ray --replicas auto: most replicas of each model"),
    Option("--target-ongoing-requests", ("ray.target_ongoing_requests",), float,
           "--ray --replicas auto: requests in flight per replica that autoscaling aims at"),
    Option("--max-ongoing-requests", ("ray.max_ongoing_requests",), int,
           "--ray: requests Serve hands one replica at once (they batch together); more wait in Serve's queue"),
    Option("--cpus-per-replica", ("ray.cpus_per_replica",), float,
           "--ray: Ray CPUs each replica reserves; also its backend threads unless --intra-op-threads is given"),
    Option("--gpus-per-replica", ("ray.gpus_per_replica",), float,
           "--ray: Ray GPUs each replica reserves (0.5: two replicas share a GPU; 0: CPU replicas)"),
)
_RAY_ONLY = tuple(o for o in OPTIONS if o.targets[0].startswith("ray.") and o.flag != "--ray")


@dataclass(frozen=True)
class ServeSettings:
    artefacts: tuple[str, ...]
    server: ServerConfig
    scheduler: SchedulerConfig
    batching: BatchingConfig
    backend: BackendConfig
    load: dict[str, str]
    ray: RayServeConfig | None = None  # None: one process, not on Ray

    @property
    def artefact(self) -> str:
        """The first artefact (the only one, usually)."""
        return self.artefacts[0]


def _artefacts(value: str | list[str] | None) -> tuple[str, ...]:
    """Directories from the command line, or from EMBEDRT_ARTEFACT (comma-separated)."""
    given = value.split(",") if isinstance(value, str) else (value or [])
    return tuple(p.strip() for p in given if p.strip())


def _check_mode(args: argparse.Namespace) -> bool:
    """Whether the flags ask for Ray; refuse flags of the other mode (they would be silently ignored)."""
    on_ray = getattr(args, "ray", None) is not None
    for option in OPTIONS:
        given = getattr(args, option.dest, None) is not None
        if given and not on_ray and option in _RAY_ONLY:
            raise EmbedrtError(f"{option.flag}: applies only with --ray (flag {option.flag} or {option.env})")
        if given and on_ray and option.dest in _NO_TLS_ON_RAY:
            raise EmbedrtError(f"{option.flag}: Serve's gRPC proxy has no TLS; leave out {option.flag} "
                               f"({option.env}) and terminate TLS in front of it (a load balancer), or serve gRPC "
                               "over TLS with embedrt serve without --ray")
    if not on_ray:
        return False
    grpc_port = getattr(args, "grpc_port", None)
    if grpc_port == 0:
        raise EmbedrtError("--grpc-port 0: Serve's gRPC proxy needs a fixed port, the same on every node; give one "
                           "(flag --grpc-port or EMBEDRT_GRPC_PORT)")
    if grpc_port is None and getattr(args, "reflection", None) is not None:
        raise EmbedrtError("--reflection: --ray serves gRPC only with --grpc-port; give one, or leave out "
                           "--reflection (EMBEDRT_REFLECTION)")
    if getattr(args, "http_port", None) == 0:
        raise EmbedrtError("--http-port 0: Serve's HTTP proxy always runs with --ray, so it needs a port (flag "
                           "--http-port or EMBEDRT_HTTP_PORT)")
    return True


def settings_from(args: argparse.Namespace) -> ServeSettings:
    """Parsed flags (already defaulted from the environment) -> the configuration dataclasses."""
    on_ray = _check_mode(args)
    values: dict[str, dict[str, Any]] = {"load": dict(_LOAD_DEFAULTS), **{s: {} for s in _SECTIONS}}
    for option in OPTIONS:
        value = getattr(args, option.dest)
        if value is None:
            continue  # not given anywhere: the dataclass default applies
        for target in option.targets:
            section, name = target.split(".")
            values[section][name] = option.to_config(value)
    artefacts = _artefacts(args.artefact)
    if not artefacts and on_ray and args.ray and (Path(args.ray) / "manifest.json").is_file():
        raise EmbedrtError(f"--ray took the artefact {args.ray} for a Ray address; put the artefacts first "
                           f"(embedrt serve {args.ray} --ray) or give the address (--ray auto {args.ray})")
    if not artefacts:
        raise EmbedrtError("give the ARTEFACT directory, or several (or set EMBEDRT_ARTEFACT, comma-separated)")
    if on_ray and "grpc_port" in values["server"]:
        values["ray"]["grpc_port"] = values["server"]["grpc_port"]  # asked for: gRPC on Ray (off by default)
    try:  # every value is checked here, before a port is bound or the model is read
        ray = RayServeConfig(**values["ray"])
        if on_ray and "intra_op_threads" not in values["backend"]:
            values["backend"]["intra_op_threads"] = ray.threads  # a replica's CPUs, not this machine's
        made = {s: cls(**values[s]) for s, cls in _SECTIONS.items() if s != "ray"}
    except ConfigError as exc:
        raise flag_error(exc, args) from None
    return ServeSettings(artefacts, made["server"], made["scheduler"], made["batching"], made["backend"],
                         values["load"], ray if on_ray else None)


def settings_from_mapping(given: Mapping[str, Any]) -> ServeSettings:
    """Settings for Ray Serve from a mapping of flags without dashes (a Serve config's ``args``):
    ``{"artefact": [...] or "a,b", "replicas": 2, "max-batch-tokens": 8192}``; EMBEDRT_* apply too."""
    parser = argparse.ArgumentParser(prog="embedrt serve (Ray Serve args)")

    def error(message: str) -> None:
        raise EmbedrtError(f"embedrt serve application: {message}")

    _add_arguments(parser)
    parser.error = error  # type: ignore[method-assign, assignment]
    argv: list[str] = []
    for key, value in given.items():
        name = key.replace("_", "-")
        if name in ("artefact", "artefacts"):
            argv[:0] = list(_artefacts(value))
        else:
            argv += [f"--{name}", str(value).lower() if isinstance(value, bool) else str(value)]
    args = parser.parse_args(argv)
    if args.ray is None:
        args.ray = ""  # a Serve application is on Ray whatever EMBEDRT_RAY says
    return settings_from(args)


def flag_error(exc: ConfigError, args: argparse.Namespace | None = None) -> EmbedrtError:
    """A configuration error in the terms of the flag (and variable) that set the field."""
    for option in OPTIONS:
        if exc.field in option.targets:
            given = getattr(args, option.dest, None) if args is not None else None
            value = f" {given}" if given is not None else ""
            return EmbedrtError(f"{option.flag}{value}: {exc.detail} (flag {option.flag} or {option.env})")
    return EmbedrtError(str(exc))


def _one_line_errors(parser: argparse.ArgumentParser) -> None:
    """Bad flag values end in one `embedrt serve: error: ...` line (exit 2), like every other check here."""

    def error(message: str) -> None:
        print(f"embedrt serve: error: {message} (see embedrt serve --help)", file=sys.stderr)
        sys.exit(2)

    parser.error = error  # type: ignore[method-assign, assignment]


def _announce(server: Any) -> None:
    config, ports, state = server.config, server.ports, server.state
    tls = " (TLS)" if config.tls_cert else ""
    http = f"http://{config.host}:{ports.http}" if ports.http is not None else "off"
    models = ", ".join(f"{m.name}{' (rerank)' if m.task == 'rerank' else ''} on {m.model.backend_name} "
                       f"{m.model.precision}" for m in state.models.values())
    print(f"embedrt serve: ready: {models}; gRPC {config.host}:{ports.grpc}{tls}; HTTP {http}", file=sys.stderr,
          flush=True)


def _loaders(settings: ServeSettings) -> list[Callable[[], Any]]:
    """One loader per artefact, Embedder or Reranker as its manifest says. The manifests are read now,
    so that a missing artefact or two of one name stop the command before a port is bound."""
    from ..embedder import Embedder
    from ..manifest import load_manifest
    from ..reranker import Reranker
    from ..server.state import check_unique_names

    manifests = [(path, load_manifest(path)) for path in settings.artefacts]  # a URL's is read from there
    check_unique_names((m.name, path) for path, m in manifests)

    def loader(path: str, kind: type[Embedder] | type[Reranker]) -> Callable[[], Any]:
        return lambda: kind.load(path, settings.load["backend"], precision=settings.load["precision"],
                                 batching=settings.batching, backend_config=settings.backend)

    return [loader(path, Reranker if m.task == "rerank" else Embedder) for path, m in manifests]


def ray_app(settings: ServeSettings) -> Any:
    """The Ray Serve application for ``settings`` (``server/ray_serve.py``); imports Ray."""
    from ..server.ray_serve import ModelOptions, build_app

    options = ModelOptions(settings.load["backend"], settings.load["precision"], settings.batching, settings.backend,
                           settings.scheduler, settings.server.warmup, settings.server.grace_s)
    return build_app(settings.artefacts, settings.ray, options, settings.server)


def _announce_ray(settings: ServeSettings, models: list[tuple[str, str, str, str]]) -> None:
    ray, config = settings.ray, settings.server
    assert ray is not None
    count = (f"{ray.min_replicas}-{ray.max_replicas} replicas (auto)" if ray.autoscaling
             else f"{ray.replicas} replica{'s' if ray.replicas != 1 else ''}")
    listed = ", ".join(f"{name}{' (rerank)' if task == 'rerank' else ''} on {backend} {precision}"
                       for name, task, backend, precision in models)
    grpc = f"; gRPC port {ray.grpc_port} (every interface)" if ray.grpc_port else ""
    print(f"embedrt serve: ready: {listed}; {count} each on Ray Serve; HTTP http://{config.host}:{config.http_port}"
          f"{grpc}", file=sys.stderr, flush=True)


def _run_ray(settings: ServeSettings) -> int:
    try:
        from ..server.ray_run import serve_on_ray

        app = ray_app(settings)
    except ImportError as exc:
        hint = f"--ray needs Ray Serve: pip install 'embedrt[ray]' (missing: {exc.name})"
        raise EmbedrtError(hint) from exc
    assert settings.ray is not None
    serve_on_ray(app, settings.ray, settings.server, lambda models: _announce_ray(settings, models))
    return 0


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=os.environ.get("EMBEDRT_LOG_LEVEL", "INFO").upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = settings_from(args)
    if settings.ray is not None:
        return _run_ray(settings)
    try:
        from ..server import EmbeddingServer, serve_until_signal
    except ImportError as exc:
        hint = f"serving needs the server extra: pip install 'embedrt[server]' (missing: {exc.name})"
        raise EmbedrtError(hint) from exc

    server = EmbeddingServer(_loaders(settings), settings.server, settings.scheduler)
    try:
        asyncio.run(serve_until_signal(server, _announce))
    except ConfigError as exc:  # a port in use, a TLS file that cannot be read: found while binding
        raise flag_error(exc, args) from None
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("serve", help="serve artefacts (embedders, rerankers) over gRPC and HTTP",
                       description="Serve one or more ARTEFACTs, each an embedder or a reranker: gRPC "
                       "(embedrt.v1.Embedder, embedrt.v1.Reranker, health, reflection) and HTTP (OpenAI's "
                       "/v1/embeddings, Cohere's /v1/rerank, TEI's /rerank, /v1/models, /health, /metrics), "
                       "batching concurrent requests together; a request's `model` picks the artefact by "
                       "its name. Every flag can also be set with the EMBEDRT_* variable shown. "
                       "SIGTERM/SIGINT drain admitted requests within --grace, then exit 0. With --ray: "
                       "replicas of each model on Ray Serve behind the same HTTP API, and the same gRPC services "
                       "with --grpc-port (docs/ray.md).")
    _add_arguments(p)
    _one_line_errors(p)
    p.set_defaults(run=_run)


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("artefact", nargs="*", default=os.environ.get("EMBEDRT_ARTEFACT"), metavar="ARTEFACT",
                   help="artefact directories written by `embedrt export`, or their URLs (s3://..., copied into "
                   "EMBEDRT_CACHE) [EMBEDRT_ARTEFACT, comma-separated]")
    for option in OPTIONS:
        env = os.environ.get(option.env)
        # argparse converts string defaults with `type`, so a bad variable fails like a bad flag.
        optional = {"nargs": "?", "const": option.const} if option.const is not None else {}
        default = "" if option.const is None else " (default: off)"
        p.add_argument(option.flag, type=option.type, default=env, metavar=option.dest.upper(), **optional,
                       help=f"{option.help}{default or f' (default: {option.default()})'} [{option.env}]")
