"""The two TensorRT flavours behind one small builder interface.

``tensorrt`` (datacenter) tunes kernels on the GPU it runs on, so it builds only for that GPU and
keeps a timing cache. ``tensorrt-rtx`` (TensorRT for RTX) compiles ahead of time without a GPU for
named compute capabilities and finishes kernels at load time; its timing cache is a no-op (since
TensorRT-RTX 1.2), its runtime cache lives with the runtime instead.
"""

from __future__ import annotations

import importlib
from typing import Any

from embedrt.engines import FLAVOURS, RTX_TARGETS

from ..errors import ExportError

_INSTALL = {
    "tensorrt": "install datacenter TensorRT (`pip install tensorrt` from NVIDIA's index; it builds on a GPU)",
    "tensorrt-rtx": "`pip install 'embedrt-export[tensorrt-rtx]'` (tensorrt-rtx-cu12-libs and -bindings)",
}


class BuilderFlavour:
    """What differs between flavours when building: targets, compute capabilities, timing cache."""

    name = ""
    timing_cache = False

    def __init__(self, trt: Any) -> None:
        self.trt = trt

    @property
    def version(self) -> str:
        return str(self.trt.__version__)

    def resolve_targets(self, requested: tuple[str, ...] | None, current_sm: str | None) -> tuple[str, ...]:
        raise NotImplementedError

    def configure_target(self, config: Any, sm: str, current_sm: str | None) -> None:
        raise NotImplementedError


class DatacenterFlavour(BuilderFlavour):
    name = "tensorrt"
    timing_cache = True

    def resolve_targets(self, requested: tuple[str, ...] | None, current_sm: str | None) -> tuple[str, ...]:
        if current_sm is None:
            raise ExportError("datacenter TensorRT builds on the GPU it targets, and no GPU is visible here; "
                              "build on that GPU, or use --flavour tensorrt-rtx to build ahead of time")
        others = [sm for sm in requested or () if sm != current_sm]
        if others:
            raise ExportError(f"datacenter TensorRT builds only for this GPU (sm{current_sm}), not "
                              f"{', '.join('sm' + s for s in others)}; run the build on such a GPU "
                              "or use --flavour tensorrt-rtx")
        return (current_sm,)

    def configure_target(self, config: Any, sm: str, current_sm: str | None) -> None:
        return None  # the builder targets the GPU it runs on


class RtxFlavour(BuilderFlavour):
    name = "tensorrt-rtx"

    def targets(self) -> tuple[str, ...]:
        """Compute capabilities this TensorRT-RTX can build for: its ``ComputeCapability`` enum."""
        members = getattr(self.trt.ComputeCapability, "__members__", {})
        found = tuple(name[2:] for name in members if name.startswith("SM") and name[2:].isdigit())
        return found or RTX_TARGETS

    def resolve_targets(self, requested: tuple[str, ...] | None, current_sm: str | None) -> tuple[str, ...]:
        offered = self.targets()
        if not requested:
            if current_sm is None:
                raise ExportError("no GPU is visible, so --target CURRENT means nothing here; name the GPUs, "
                                  f"e.g. --target sm89,sm120 (TensorRT-RTX targets: "
                                  f"{', '.join('sm' + s for s in offered)})")
            requested = (current_sm,)
        # Only what the enum offers. CURRENT on an unlisted GPU builds a plan that cannot load there:
        # on an H100 (SM90) TensorRT-RTX 1.7.1 built it, then refused to deserialise it ("Supported
        # compute capabilities: None"; docs/tensorrt.md), so refuse before spending the build.
        bad = [sm for sm in requested if sm not in offered]
        if bad:
            raise ExportError(f"TensorRT-RTX {self.version} cannot target {', '.join('sm' + s for s in bad)} "
                              f"(it targets {', '.join('sm' + s for s in offered)}; Hopper SM90 is not among "
                              "them); use --flavour tensorrt (datacenter TensorRT) on that GPU")
        return tuple(dict.fromkeys(requested))

    def configure_target(self, config: Any, sm: str, current_sm: str | None) -> None:
        config.num_compute_capabilities = 1
        if not config.set_compute_capability(getattr(self.trt.ComputeCapability, f"SM{sm}"), 0):
            raise ExportError(f"TensorRT-RTX {self.version} refused compute capability sm{sm}")


_CLASSES: dict[str, type[BuilderFlavour]] = {"tensorrt": DatacenterFlavour, "tensorrt-rtx": RtxFlavour}


def load_flavour(name: str | None) -> BuilderFlavour:
    """The named flavour, or (None) datacenter TensorRT where installed, else TensorRT-RTX."""
    names = [name] if name else list(FLAVOURS)
    for candidate in names:
        if candidate not in _CLASSES:
            raise ExportError(f"unknown flavour {candidate!r}; choose tensorrt or tensorrt-rtx")
        try:
            module = importlib.import_module(FLAVOURS[candidate])
        except ImportError as exc:
            if name:
                raise ExportError(f"--flavour {name} is not installed ({exc}); {_INSTALL[name]}") from exc
            continue
        return _CLASSES[candidate](module)
    raise ExportError(f"no TensorRT flavour is installed; {_INSTALL['tensorrt-rtx']}, or {_INSTALL['tensorrt']}")


def parse_targets(text: str | None) -> tuple[str, ...] | None:
    """``CURRENT`` (or nothing) -> None; ``sm86,sm89`` / ``8.6,89`` -> ("86", "89")."""
    if text is None or text.strip().upper() in ("", "CURRENT"):
        return None
    targets = []
    for item in text.split(","):
        raw = item.strip().lower().removeprefix("sm").replace(".", "")
        if not raw.isdigit():
            raise ExportError(f"--target {item.strip()!r} is not a compute capability; write e.g. sm89 or CURRENT")
        targets.append(raw)
    return tuple(dict.fromkeys(targets))


__all__ = ["BuilderFlavour", "DatacenterFlavour", "RtxFlavour", "load_flavour", "parse_targets"]
