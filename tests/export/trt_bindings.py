"""The real datacenter TensorRT Python bindings, importable without TensorRT's libraries or a GPU.

``prepare DEST VERSION...`` (run by ``make test`` during setup; the test never downloads) fetches
``tensorrt-cu12-bindings`` wheels (about 1 MB each: no ``-libs``, whose packages are placeholders
anyway), unpacks each into ``DEST/<version>/`` and builds, with the system C compiler, stand-ins
for the three libraries the bindings' extension links against. The bindings call into those
libraries only when a TensorRT object is created; importing resolves nine entry points, so a
stand-in that exports them (doing nothing) is enough to load the module and read its classes,
methods, signatures and enums. No engine can be built that way.

``check MODULE_DIR|MODULE`` (run by ``test_trt_contract.py`` in a fresh interpreter per version,
since two versions of one extension cannot share a process) reads the uses our code makes as JSON
on stdin and prints, as JSON, the ones these bindings do not offer.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

# What the extension leaves undefined (``nm -D --undefined-only tensorrt.so``, TensorRT 10.0.1 … 11.4).
ENTRY_POINTS = ("createInferBuilder_INTERNAL", "createInferRefitter_INTERNAL", "createInferRuntime_INTERNAL",
                "createNvOnnxParser_INTERNAL", "createNvOnnxParserRefitter_INTERNAL", "getNvOnnxParserVersion",
                "getPluginRegistry", "getBuilderPluginRegistry", "initLibNvInferPlugins")
LIBRARIES = ("nvinfer", "nvinfer_plugin", "nvonnxparser")  # NEEDED as lib<name>.so.<major>
MODULE = "tensorrt_bindings"


def prepare(dest: Path, versions: list[str]) -> None:
    source = "\n".join(f"void *{name}(void) {{ return 0; }}" for name in ENTRY_POINTS) + "\n"
    with tempfile.TemporaryDirectory() as tmp:
        c_file = Path(tmp) / "standin.c"
        c_file.write_text("/* TensorRT stand-in: entry points only, for importing the bindings. */\n" + source)
        for version in versions:
            wheels = Path(tmp) / version
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                            "--no-deps", "--only-binary=:all:", f"tensorrt-cu12-bindings=={version}",
                            "-d", str(wheels)], check=True)
            (wheel,) = wheels.glob("*.whl")
            out = dest / version
            with zipfile.ZipFile(wheel) as archive:
                archive.extractall(out)
            major = version.split(".")[0]
            for lib in LIBRARIES:
                # The extension's RPATH / RUNPATH includes $ORIGIN: stand-ins beside it are found.
                name = f"lib{lib}.so.{major}"
                subprocess.run(["cc", "-shared", "-fPIC", f"-Wl,-soname,{name}", "-o",
                                str(out / MODULE / name), str(c_file)], check=True)
            print(f"tensorrt-cu12-bindings {version}: {out}")


# -- check: runs inside the interpreter that imported one version's bindings ------------------------

def _split_params(text: str) -> list[str]:
    """``a: T, b: List[T] = x`` -> one string per parameter (commas inside brackets kept)."""
    params, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "([{<":
            depth += 1
        elif ch in ")]}>":
            depth -= 1
        elif ch == "," and depth == 0:
            params.append(text[start:i].strip())
            start = i + 1
    if text[start:].strip():
        params.append(text[start:].strip())
    return params


def signatures(obj: Any, name: str) -> list[list[tuple[str, bool]]] | None:
    """Each overload's parameters after ``self`` as (name, has default); None when unknown."""
    if inspect.isfunction(obj) or inspect.ismethod(obj):
        params = list(inspect.signature(obj).parameters.values())
        return [[(p.name, p.default is not inspect.Parameter.empty) for p in params
                 if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]]
    doc = getattr(obj, "__doc__", None) or ""
    found = []
    for match in re.finditer(rf"^(?:\d+\. )?{re.escape(name)}\((.*)\) -> ", doc, re.MULTILINE):
        params = _split_params(match.group(1))
        if params and params[0].startswith("self"):
            params = params[1:]
        found.append([(p.split(":")[0].split("=")[0].strip(), "=" in p) for p in params])
    return found or None


def _accepts(overloads: list[list[tuple[str, bool]]], positional: int, keywords: list[str]) -> bool:
    for params in overloads:
        names = [n for n, _ in params]
        if positional > len(params) or any(k not in names[positional:] for k in keywords):
            continue
        given = set(names[:positional]) | set(keywords)
        if all(has_default or n in given for n, has_default in params):
            return True
    return False


def check_use(trt: Any, use: dict[str, Any]) -> str | None:
    """Why ``use`` fails against module ``trt``, or None. A use names a path from the module
    (``["IBuilderConfig", "set_timing_cache"]``) and how it is used: read, write, call, override."""
    path, kind = use["path"], use["kind"]
    owner: Any = trt
    for i, part in enumerate(path):
        if not hasattr(owner, part):
            return f"{'.'.join(path[:i + 1])} does not exist"
        parent, owner = owner, getattr(owner, part)
    where = ".".join(path)
    if kind == "write":
        static = inspect.getattr_static(parent, path[-1])
        if not (isinstance(static, property) and static.fset is not None):
            return f"{where} cannot be assigned"
    elif kind in ("call", "override"):
        target = owner.__init__ if inspect.isclass(owner) else owner
        overloads = signatures(target, "__init__" if inspect.isclass(owner) else path[-1])
        if overloads is None:
            return f"{where}: no signature to check against"
        if not _accepts(overloads, use["positional"], use.get("keywords", [])):
            shown = " | ".join("(" + ", ".join(n for n, _ in o) + ")" for o in overloads)
            return f"{where} takes {shown}, called with {use['positional']} positional + {use.get('keywords', [])}"
    return None


def check(where: str, uses: list[dict[str, Any]]) -> dict[str, Any]:
    if Path(where).is_dir():
        sys.path.insert(0, where)
        module = MODULE
    else:
        module = where
    trt = importlib.import_module(module)
    problems = {}
    for use in uses:
        why = check_use(trt, use)
        if why is not None:
            problems[use["id"]] = why
    return {"version": trt.__version__, "problems": problems}


def main(argv: list[str]) -> int:
    if argv[:1] == ["prepare"] and len(argv) >= 3:
        prepare(Path(argv[1]), argv[2:])
        return 0
    if argv[:1] == ["check"] and len(argv) == 2:
        print(json.dumps(check(argv[1], json.load(sys.stdin))))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
