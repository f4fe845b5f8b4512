"""The registries of what the federation trains: every completed round's result as a new, immutable version.

:class:`PoolRegistry` keeps Poly-PRAG's expert pool (and its learned query router),
:class:`GeneratorRegistry` DistilledPRAG's generator. ``<root>/v000003/`` holds one version
(safetensors + manifest, with the round and metrics). A version
directory appears only once complete (atomic rename), so after a crash the latest version on disk
is always a whole one, and the coordinator resumes from the round after it. ``rounds.jsonl``
keeps one line per round run (who was accepted or rejected, bytes each site sent), so any
runtime (simulation or a deployed SuperLink) reports the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import Tensor

from fedprag.coordinator.versions import version_dir, versions_at
from fedprag.shared.config import FederationSection
from fedprag.shared.lora.layers import LoRALinear
from fedprag.shared.lora.store import EncodingMismatch
from fedprag.shared.methods.distilled import serializer as distilled_serializer
from fedprag.shared.methods.distilled.trainer import DistilledEncoder
from fedprag.shared.methods.poly.config import PolyConfig
from fedprag.shared.methods.poly.layers import ExpertPool, QueryRouter
from fedprag.shared.methods.poly.serializer import load_pool, load_router, save_pool, save_router
from fedprag.shared.models.loading import BaseModel

ROUTER_DIR = "router"
DRAFT_ROUTER_DIR = "router.draft"
"""The learned router as the rounds left it: what a resumed federation continues; never served."""


def registry_dir(federation: FederationSection) -> Path:
    """Where the coordinator publishes versions and serving reads them: ``<work_dir>/registry``."""
    return Path(federation.work_dir) / "registry"


class VersionedRegistry:
    """Numbered, complete versions for one base model under ``root``, and the record of the rounds."""

    def __init__(self, root: str | Path, base_digest: str):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.base_digest = base_digest

    def versions(self) -> list[int]:
        return versions_at(self.root)

    def path(self, version: int) -> Path:
        return version_dir(self.root, version)

    def record_round(self, summary: dict) -> None:
        """Append one round's summary (JSON-serialisable) to ``rounds.jsonl``."""
        with open(self.root / "rounds.jsonl", "a", encoding="utf-8") as out:
            out.write(json.dumps(summary) + "\n")
            out.flush()

    @staticmethod
    def rounds_at(root: str | Path) -> list[dict]:
        """Every round summary recorded under ``root``, oldest first (a torn line from a crash is skipped)."""
        path = Path(root) / "rounds.jsonl"
        if not path.is_file():
            return []
        summaries = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                summaries.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return summaries


class PoolRegistry(VersionedRegistry):
    """Versioned expert pools (and their learned query routers) for one base model."""

    def latest(self) -> tuple[ExpertPool, dict] | None:
        """The newest pool and its manifest (``version``, ``round``), or ``None`` if there is none."""
        versions = self.versions()
        return load_pool(self.path(versions[-1]), self.base_digest) if versions else None

    def publish(self, pool: ExpertPool, config: PolyConfig, round_number: int, metrics: dict[str, float]) -> int:
        """Write ``pool`` as the next version; returns its number."""
        versions = self.versions()
        version = versions[-1] + 1 if versions else 0
        save_pool(self.path(version), pool, config, self.base_digest, version,
                  extra={"round": round_number, "metrics": metrics})
        return version

    def save_router(self, version: int, router: QueryRouter, draft: bool = False) -> None:
        """Keep the learned query router for pool ``version``: as the rounds' ``draft`` (for resuming),
        or published, once, when the pool is released (a published router is never rewritten)."""
        target = self.path(version) / (DRAFT_ROUTER_DIR if draft else ROUTER_DIR)
        if not draft and target.is_dir():
            return
        pool, _ = load_pool(self.path(version), self.base_digest)
        save_router(target, router, pool, self.base_digest)

    def versions_with_router(self, draft: bool = False) -> list[int]:
        """Versions whose learned query router is published (or kept as a draft), oldest first."""
        return [v for v in self.versions() if (self.path(v) / (DRAFT_ROUTER_DIR if draft else ROUTER_DIR)).is_dir()]

    def router(self, version: int, draft: bool = False) -> QueryRouter:
        """Pool ``version``'s published (or ``draft``) learned query router; refused if it routes for another pool."""
        pool, _ = load_pool(self.path(version), self.base_digest)
        router, pool_digest = load_router(self.path(version) / (DRAFT_ROUTER_DIR if draft else ROUTER_DIR),
                                          self.base_digest)
        if pool_digest != pool.digest():
            raise EncodingMismatch(f"{self.path(version)}: the router routes for pool {pool_digest}, not this one")
        return router


class GeneratorRegistry(VersionedRegistry):
    """Versioned DistilledPRAG generators for one base model."""

    def latest(self, base: BaseModel, layers: dict[str, LoRALinear]) -> tuple[DistilledEncoder, dict] | None:
        """The newest generator bound to ``base`` and its manifest (``version``, ``round``), or ``None``."""
        versions = self.versions()
        return distilled_serializer.load_with_manifest(self.path(versions[-1]), base, layers) if versions else None

    def mask_vector(self) -> Tensor:
        """The mask token's vector of the newest generator (the same in every version of a federation)."""
        versions = self.versions()
        if not versions:
            raise FileNotFoundError(f"{self.root}: no generator is published yet")
        return distilled_serializer.mask_vector(self.path(versions[-1]), self.base_digest)

    def publish(self, encoder: DistilledEncoder, round_number: int, metrics: dict[str, float]) -> int:
        """Write the generator as the next version; returns its number."""
        versions = self.versions()
        version = versions[-1] + 1 if versions else 0
        distilled_serializer.save(self.path(version), encoder,
                                  extra={"version": version, "round": round_number, "metrics": metrics})
        return version
