"""A progress indicator while TensorRT builds: phase lines from IProgressMonitor, else a heartbeat."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

Log = Callable[[str], None]


def progress_monitor(trt: Any, log: Log, depth: int = 2) -> Any | None:
    """An ``IProgressMonitor`` that logs phases up to ``depth`` levels deep, with elapsed seconds.

    Deeper phases (per-layer tactic timing) would flood the log; they are counted, not printed.
    Returns None where the flavour has no progress monitor.
    """
    if not hasattr(trt, "IProgressMonitor"):
        return None

    class _Monitor(trt.IProgressMonitor):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.started = time.perf_counter()
            self.levels: dict[str, int] = {}
            self.lock = threading.Lock()  # TensorRT may call from several threads

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            with self.lock:
                level = self.levels.get(parent_phase, -1) + 1 if parent_phase else 0
                self.levels[phase_name] = level
                if level < depth:
                    log(f"  {'  ' * level}{phase_name} ({num_steps} steps) "
                        f"[{time.perf_counter() - self.started:.1f} s]")

        def step_complete(self, phase_name: str, step: int) -> bool:
            return True  # never cancel

        def phase_finish(self, phase_name: str) -> None:
            with self.lock:
                self.levels.pop(phase_name, None)

    return _Monitor()


@contextmanager
def heartbeat(log: Log, what: str, every_s: float = 10.0) -> Iterator[None]:
    """Log ``what ... N s`` every ``every_s`` until the block ends: for builders without a monitor."""
    done = threading.Event()
    started = time.perf_counter()

    def beat() -> None:
        while not done.wait(every_s):
            log(f"  {what} ... {time.perf_counter() - started:.0f} s")

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


__all__ = ["heartbeat", "progress_monitor"]
