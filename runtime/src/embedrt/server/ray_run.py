"""``embedrt serve --ray``: run the Ray Serve application (``ray_serve``) until SIGTERM or SIGINT.

Connect to (or start) Ray, start Serve's HTTP proxy on ``--host`` / ``--http-port``, deploy the
application and wait until every replica is up (loaded and warmed up); print the ready line; on
SIGTERM / SIGINT delete the application (Serve stops routing to it, and each replica finishes what
it holds within ``--grace``) and disconnect, which also stops a Ray instance this command started.
On a cluster that was already running, Serve itself (controller, proxies) stays up for other
applications, and so do its HTTP options: Serve takes them when it first starts on a cluster.
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
from .ray_serve import APP_NAME

log = logging.getLogger(__name__)


def serve_on_ray(app: serve.Application, config: RayServeConfig, server: ServerConfig,
                 announce: Callable[[list[tuple[str, str, str, str]]], None]) -> None:
    """Deploy ``app`` and serve it until a signal; ``announce`` gets each model's (name, task, backend,
    precision) once every replica is ready. A signal while starting stops the start."""
    stop = threading.Event()
    deployed = False

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
            serve.start(http_options={"host": server.host, "port": server.http_port}, logging_config=quiet)
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
            _delete()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        ray.shutdown()


def _delete() -> None:
    try:
        serve.delete(APP_NAME)
    except Exception as exc:  # Serve never started, or the cluster went away: nothing left to stop
        log.warning("could not delete the Serve application %s: %s", APP_NAME, exc)


__all__ = ["serve_on_ray"]
