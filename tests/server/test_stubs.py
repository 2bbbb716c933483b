"""The committed gRPC stubs match the .proto, and the server extra asks for what they need."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ROOT / "runtime" / "src" / "embedrt" / "server" / "_generated"
SCRIPT = ROOT / "scripts" / "generate_stubs.py"


def _lower_bound(requirement: str) -> str:
    found = re.search(r">=\s*([0-9][0-9.]*)", requirement)
    assert found, f"{requirement!r} has no lower bound"
    return found.group(1)


def test_committed_stubs_match_the_proto(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools (a dev dependency) generates the stubs")
    subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)], check=True, capture_output=True)
    made = sorted(p.name for p in tmp_path.iterdir())
    assert made == sorted(p.name for p in GENERATED.iterdir() if p.is_file()), made
    stale = [name for name in made if (tmp_path / name).read_text() != (GENERATED / name).read_text()]
    assert not stale, f"{stale} differ from the .proto: run `python scripts/generate_stubs.py` and commit"


def test_server_extra_asks_for_the_versions_the_stubs_were_generated_for() -> None:
    pb2 = (GENERATED / "embedding_pb2.py").read_text()
    grpc_stub = (GENERATED / "embedding_pb2_grpc.py").read_text()
    protobuf_needed = re.search(r"# Protobuf Python Version: ([0-9.]+)", pb2).group(1)  # type: ignore[union-attr]
    grpc_needed = re.search(r"GRPC_GENERATED_VERSION = '([0-9.]+)'", grpc_stub).group(1)  # type: ignore[union-attr]
    extra = tomllib.loads((ROOT / "runtime" / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    wanted = {re.split(r"[<>=!~ ;\[]", r, maxsplit=1)[0]: r for r in extra["server"]}
    assert _lower_bound(wanted["protobuf"]) == protobuf_needed
    assert f"<{int(protobuf_needed.split('.')[0]) + 1}" in wanted["protobuf"].replace(" ", "")
    assert _lower_bound(wanted["grpcio"]) == grpc_needed
    assert "grpcio-tools" not in wanted, "stubs are committed: a server does not need grpcio-tools"


def test_stubs_import_without_writing(tmp_path: Path) -> None:
    """Importing the stubs writes nothing into the package (a read-only install works)."""
    before = {p: p.stat().st_mtime_ns for p in GENERATED.parent.rglob("*") if "__pycache__" not in p.parts}
    code = "import embedrt.server.stubs as s; print(s.SERVICE_NAME)"
    out = subprocess.run([sys.executable, "-B", "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "embedrt.v1.Embedder"
    after = {p: p.stat().st_mtime_ns for p in GENERATED.parent.rglob("*") if "__pycache__" not in p.parts}
    assert after == before


def test_messages_pickle_by_their_real_module() -> None:
    """Ray Serve's gRPC proxy pickles each request for its replica: the classes must be found where they are."""
    import pickle

    from embedrt.server import pb2

    request = pb2.EmbedRequest(inputs=["a", "b"], model="m", dimensions=32)
    assert type(request).__module__ == pb2.__name__
    assert pickle.loads(pickle.dumps(request)) == request
