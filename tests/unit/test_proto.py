"""The committed gRPC stubs are exactly what the pinned grpcio-tools makes of routing.proto."""

from pathlib import Path

from fedprag.shared.proto import generate


def test_committed_stubs_match_the_proto(tmp_path: Path):
    for fresh in generate.generate(tmp_path):
        committed = generate.HERE / fresh.name
        assert committed.read_bytes() == fresh.read_bytes(), f"{fresh.name} is stale: python -m fedprag.shared.proto.generate"
