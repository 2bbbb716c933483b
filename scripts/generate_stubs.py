"""Regenerate the committed gRPC stubs in ``runtime/src/embedrt/server/_generated/`` from the .proto.

    python scripts/generate_stubs.py            # rewrite the committed stubs after editing the .proto
    python scripts/generate_stubs.py --out DIR  # write them elsewhere (tests/server/test_stubs.py compares)

The stubs are generated here, at development time, and committed (marked generated), so that an
installed server neither writes into its own package directory on first import (which fails on a
read-only install) nor needs grpcio-tools. grpcio-tools is a dev dependency, pinned in
constraints.txt so that the same .proto always gives the same files; the protobuf runtime the
stubs need (their "Protobuf Python Version") is the lower bound of ``protobuf`` in the server extra.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

RUNTIME = Path(__file__).resolve().parent.parent / "runtime" / "src" / "embedrt"
PROTO_ROOT = RUNTIME / "proto"
PROTO = "embedrt/v1/embedding.proto"  # the name the descriptor pool (and reflection) knows it by
OUT = RUNTIME / "server" / "_generated"
FILES = ("__init__.py", "embedding_pb2.py", "embedding_pb2.pyi", "embedding_pb2_grpc.py")
HEADER = ('"""Generated from {proto} by scripts/generate_stubs.py. DO NOT EDIT: change the .proto and run '
          'the script."""\n')


def generate(out: Path = OUT) -> Path:
    """Run protoc into a temporary folder, then put the files in ``out``."""
    from grpc_tools import protoc

    include = Path(protoc.__file__).resolve().parent / "_proto"  # google/protobuf/*.proto
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        code = protoc.main(["grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={tmp}",
                            f"--pyi_out={tmp}", f"--grpc_python_out={tmp}", str(PROTO_ROOT / PROTO)])
        if code != 0:
            raise SystemExit(f"protoc failed ({code}) on {PROTO_ROOT / PROTO}")
        made = Path(tmp) / Path(PROTO).parent
        header = HEADER.format(proto=PROTO)
        for path in made.iterdir():
            text = path.read_text()
            # protoc writes absolute imports from the .proto's package (`from embedrt.v1 import ...`),
            # which would resolve against the runtime package; the stubs live side by side: import relatively.
            text = text.replace("from embedrt.v1 import embedding_pb2", "from . import embedding_pb2")
            # ... and names the messages' module after the .proto (embedrt.v1.embedding_pb2), which does not
            # exist, so pickle (Ray Serve's proxy hands requests to replicas pickled) could not find the
            # classes: name the module they are in. The descriptor pool still knows the file as PROTO.
            text = text.replace("BuildTopDescriptorsAndMessages(DESCRIPTOR, 'embedrt.v1.embedding_pb2', _globals)",
                                "BuildTopDescriptorsAndMessages(DESCRIPTOR, __name__, _globals)")
            (out / path.name).write_text(header + text if path.suffix == ".py" else text)
        (out / "__init__.py").write_text(header)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"where to write (default: {OUT})")
    print(generate(parser.parse_args().out), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
