"""Regenerate the committed gRPC stubs from ``routing.proto``: ``python -m fedprag.shared.proto.generate``.

The stubs are generated with the pinned ``grpcio-tools`` under the proto path
``fedprag/shared/proto/``, so they import each other as ``fedprag.shared.proto``.
``tests/unit/test_proto.py`` checks that the committed stubs are what this produces.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
PROTO = "routing.proto"
STUBS = ("routing_pb2.py", "routing_pb2.pyi", "routing_pb2_grpc.py")


def generate(out_dir: Path) -> list[Path]:
    """Write the stubs of ``routing.proto`` into ``out_dir``; returns their paths."""
    from grpc_tools import protoc  # a build-time tool: only needed to regenerate

    with tempfile.TemporaryDirectory() as tmp:
        package = Path(tmp) / "fedprag" / "shared" / "proto"
        package.mkdir(parents=True)
        shutil.copy(HERE / PROTO, package / PROTO)
        code = protoc.main(["protoc", f"-I{tmp}", f"--python_out={tmp}", f"--pyi_out={tmp}",
                            f"--grpc_python_out={tmp}", str(package / PROTO)])
        if code != 0:
            raise RuntimeError(f"protoc failed with exit code {code}")
        out_dir.mkdir(parents=True, exist_ok=True)
        return [Path(shutil.copy(package / name, out_dir / name)) for name in STUBS]


if __name__ == "__main__":
    for path in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE):
        print(path)
