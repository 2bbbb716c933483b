"""``embedrt serve --ray``: run the Ray Serve application (``ray_serve``) until SIGTERM or SIGINT.

Connect to (or start) Ray, start Serve's HTTP proxy on ``--host`` / ``--http-port`` (and with
``--grpc-port``, its gRPC proxy with our services: ``ray_grpc``), deploy the application and wait
until every replica is up (loaded and warmed up); print the ready line; on SIGTERM / SIGINT delete
the application (Serve stops routing to it, and each replica finishes what it holds within
``--grace``) and disconnect, which also stops a Ray instance this command started. On a cluster
that was already running, Serve itself (controller, proxies) stays up for other applications, and
so do its HTTP and gRPC options: Serve takes them when it first starts on a cluster (a running
Serve without our gRPC services on ``--grpc-port`` is refused before anything is deployed).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from typing import Any

import ray
from ray import serve

from ..config import RayServeConfig, ServerConfig
from ..errors import EmbedrtError
from .ray_grpc import SERVICER_FUNCTIONS, grpc_options
from .ray_serve import APP_NAME

log = logging.getLogger(__name__)


def serve_on_ray(app: serve.Application, config: RayServeConfig, server: ServerConfig,
                 announce: Callable[[list[tuple[str, str, str, str]]], None]) -> None:
    """Deploy ``app`` and serve it until a signal; ``announce`` gets each model's (name, task, backend,
    precision) once every replica is ready. A signal while starting stops the start."""
    stop = threading.Event()
    deploying = deployed = False

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()
        if not deployed:
            raise KeyboardInterrupt  # interrupt ray.init / serve.run; cleaned up below

    # ray.init installs its own SIGTERM handler (sys.exit): ours go in after it.
    ray.init(address=config.address, include_dashboard=False, logging_level=logging.WARNING)
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            # Serve's own logs (controller, proxy, replicas) at this process's level (EMBEDRT_LOG_LEVEL)
            quiet = {"log_level": logging.getLevelName(logging.getLogger().getEffectiveLevel())}
            grpc = grpc_options(config.grpc_port, server.reflection) if config.grpc_port else None
            serve.start(http_options={"host": server.host, "port": server.http_port}, grpc_options=grpc,
                        logging_config=quiet)
            if config.grpc_port:
                check_grpc(config.grpc_port)
                if server.host in ("127.0.0.1", "localhost", "::1"):
                    log.warning("Serve's gRPC proxy listens on port %d of every interface, not only on --host %s "
                                "(it has no host option)", config.grpc_port, server.host)
            deploying = True
            handle = serve.run(app, name=APP_NAME, route_prefix="/", logging_config=quiet)
            deployed = True
            announce(handle.models.remote().result())
            stop.wait()
            log.info("stopping: Serve drains the replicas (grace %.1fs)", server.grace_s)
        except KeyboardInterrupt:
            log.warning("stopped while starting")
        finally:
            for sig in previous:  # a second Ctrl-C must not cut the drain short
                signal.signal(sig, signal.SIG_IGN)
            if deploying:  # not before: an application of that name on the cluster may be another's
                _delete()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        ray.shutdown()


def check_grpc(port: int) -> None:
    """EmbedrtError unless Serve's proxies serve our services on ``port``: on a cluster where Serve was
    already running, its own gRPC options stay (Serve takes them when it first starts)."""
    try:  # no public API tells a running Serve's gRPC options: ask its controller
        client: Any = serve.context._get_global_client()
        running: Any = ray.get(client._controller.get_grpc_config.remote())
        served_port, functions = int(running.port), list(running.grpc_servicer_functions)
    except Exception as exc:  # a Ray whose internals moved: say so, and let clients find out
        log.warning("could not check Serve's gRPC options (%s); gRPC may not be served on port %d", exc, port)
        return
    if served_port == port and set(SERVICER_FUNCTIONS) <= set(functions):
        return
    now = f"on port {served_port} for {functions}" if functions and served_port > 0 else "off"
    raise EmbedrtError(f"--grpc-port {port}: Serve already runs on this cluster with gRPC {now}, and keeps the "
                       "options it started with; stop it (serve shutdown, which stops every application on it) "
                       "and run this again, or leave out --grpc-port")


def _delete() -> None:
    try:
        serve.delete(APP_NAME)
    except Exception as exc:  # Serve never started, or the cluster went away: nothing left to stop
        log.warning("could not delete the Serve application %s: %s", APP_NAME, exc)


__all__ = ["check_grpc", "serve_on_ray"]
