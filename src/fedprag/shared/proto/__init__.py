"""fedprag's gRPC services: ``routing.proto`` and the Python stubs generated from it (committed)."""
