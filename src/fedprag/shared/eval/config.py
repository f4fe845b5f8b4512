"""The ``[harness]`` section: how the evaluation harness retrieves and answers (no torch here, so
the configuration loads without it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HarnessConfig:
    top_k: int = 3
    hops: int = 1
    """Retrieval hops. 2 adds a bridge passage for multi-hop questions (see :meth:`fedprag.shared.eval.harness.Retriever.top_k`)."""
    batch_size: int = 32
    latency_queries: int = 24
    max_new_tokens: int = 12
    seed: int = 0

    def validate(self) -> None:
        for name in ("top_k", "batch_size", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"harness.{name}: must be a positive integer")
        if self.latency_queries < 0:
            raise ValueError("harness.latency_queries: must be zero or more")
        if self.hops not in (1, 2):
            raise ValueError(f"harness.hops: must be 1 or 2, got {self.hops}")
