"""The site store: a data owner's passages and their private encoding, in one data directory.

Layout of ``<data_dir>``::

    passages.parquet        passage_id, text (the only copy of the text; it never leaves)
    augmentations.parquet   optional encoding-time QA, if the owner supplied it
    augment/                what the model-based augmenter wrote for the other passages (a cache)
    routing/                the site's private routing rows (the Poly-PRAG serializer's format)
    pool/                   the latest pool the coordinator released, with its settings
    generator/              the latest generator the coordinator released (distilled mode)
    state.json              site id, rounds joined, pool version
    secret.key              32 random bytes keying the site's reply ids (mode 0600; never leaves)
    .lock                   held by whoever writes: a round, the daemon's ingest or encoding

Every file is replaced atomically, so a crash mid-ingest leaves the previous complete state, and
every write happens under the store's lock (:meth:`SiteStore.locked`), so a round and the daemon
never interleave their writes. A passage is *encoded* once it has a routing row; until then it is
*pending*, and the routing service does not search it.
Ingestion is idempotent: a passage is keyed by its id (given, or a hash of its text), re-ingesting
the same passages adds nothing, and an id that comes back with different text is an error rather
than a silent overwrite.

The source files are read and checked by :mod:`fedprag.client.sources`, which says what ingestion
accepts and refuses.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from fedprag.client.sources import SourcePassage, checked, prepared, read_sources, shown
from fedprag.shared.data.augment import Augmenter, complete
from fedprag.shared.data.schema import Augmentation, Passage
from fedprag.shared.io import atomic_path, atomic_write_text, recover_atomic
from fedprag.shared.log import get_logger
from fedprag.shared.lora.layers import LoRALinear
from fedprag.shared.methods.distilled import serializer as distilled_serializer
from fedprag.shared.methods.distilled.trainer import DistilledEncoder
from fedprag.shared.methods.poly.config import PolyConfig
from fedprag.shared.methods.poly.layers import ExpertPool, RoutingTable
from fedprag.shared.methods.poly.serializer import load_pool, load_routing, save_pool, save_routing
from fedprag.shared.models.loading import BaseModel

log = get_logger(__name__)

PASSAGES = "passages.parquet"
AUGMENTATIONS = "augmentations.parquet"
ROUTING = "routing"
POOL = "pool"
GENERATOR = "generator"
STATE = "state.json"
SECRET = "secret.key"
LOCK = ".lock"


@dataclass
class SiteState:
    """What ``fedprag client status`` shows, besides the passage count."""

    site_id: str
    rounds_joined: list[int] = field(default_factory=list)
    pool_version: int = 0
    home_experts: list[int] = field(default_factory=list)  # assigned by the coordinator on first join


@dataclass(frozen=True)
class IngestReport:
    added: int
    unchanged: int
    split: int = 0  # source passages over the limit that were stored as '<id>#k' chunks


class SiteStore:
    """One site's data directory; the only component that ever reads passage text."""

    def __init__(self, root: str | Path, site_id: str | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        state_path = self.root / STATE
        if state_path.is_file():
            self.state = SiteState(**json.loads(state_path.read_text()))
        else:
            self.state = SiteState(site_id=site_id or f"site-{hashlib.sha256(str(self.root.resolve()).encode()).hexdigest()[:8]}")
            self.save_state()
        with self.locked():  # no writer is active: finish or undo what a killed one left
            recovered = recover_atomic(self.root)
        if recovered:
            log.warning("store.recovered", site=self.state.site_id, files=recovered)

    def save_state(self) -> None:
        atomic_write_text(self.root / STATE, json.dumps(asdict(self.state), indent=2))

    def read_state(self) -> SiteState:
        """A fresh copy of ``state.json`` as written last (this object's ``state`` is left alone)."""
        return SiteState(**json.loads((self.root / STATE).read_text()))

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the store's write lock (an advisory ``flock``, released if the holder dies)."""
        with open(self.root / LOCK, "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def secret(self) -> bytes:
        """The site's private key for reply ids, created on first use; it never leaves the site."""
        path = self.root / SECRET
        if not path.is_file():
            with self.locked(), atomic_path(path) as tmp:
                tmp.write_bytes(secrets.token_bytes(32))
                tmp.chmod(0o600)
        return path.read_bytes()

    def passages(self) -> list[Passage]:
        path = self.root / PASSAGES
        if not path.is_file():
            return []
        table = pq.read_table(path)
        return [Passage(i, 0, t) for i, t in zip(table.column("passage_id").to_pylist(), table.column("text").to_pylist())]

    def supplied_augmentations(self) -> dict[str, Augmentation]:
        """The augmentation the owner supplied at ingest, by passage id."""
        supplied: dict[str, Augmentation] = {}
        path = self.root / AUGMENTATIONS
        if path.is_file():
            for row in pq.read_table(path).to_pylist():
                supplied[row["passage_id"]] = Augmentation(row["passage_id"], row["rewrite"],
                                                           [(q, a) for q, a in zip(row["questions"], row["answers"])])
        return supplied

    def augmentations(self, augment: Augmenter, passages: list[Passage] | None = None) -> dict[str, Augmentation]:
        """Each of ``passages`` (default: all) by id: the owner's augmentation where supplied, else
        what ``augment`` writes (the model-based augmenter caches it under ``augment/``)."""
        return complete(self.passages() if passages is None else passages, self.supplied_augmentations(), augment)

    def ingest(self, sources: Iterable[str | Path]) -> IngestReport:
        """Add passages from JSONL, Parquet or text-folder sources (see the module docstring).

        All or nothing: every source is read and checked first; any bad row raises a
        :class:`DatasetError` naming its file and row, and then nothing of this call is stored.
        """
        return self.add_read(read_sources(sources))

    def add_passages(self, pairs: Iterable[tuple[str, str]],
                     augmentations: dict[str, Augmentation] | None = None) -> IngestReport:
        """Add (id, text) passages and, optionally, their augmentation; idempotent and atomic.

        The pairs are checked as ingested rows are (an error names ``<data_dir>, row N``, N counted
        from 0); a passage over the limit is split, and its augmentation then left out.
        """
        rows = [checked(pid, text, self.root, row) for row, (pid, text) in enumerate(pairs)]
        return self.add_read(prepared(rows), augmentations)

    def add_read(self, passages: Iterable[SourcePassage],
                 augmentations: dict[str, Augmentation] | None = None) -> IngestReport:
        """Store passages from :func:`read_sources`; nothing is written unless all of them can be."""
        with self.locked():
            return self._add_read(list(passages), augmentations)

    def _add_read(self, passages: list[SourcePassage], augmentations: dict[str, Augmentation] | None) -> IngestReport:
        existing = {p.passage_id: p.text for p in self.passages()}
        new: dict[str, str] = {}
        unchanged = 0
        split: set[str] = set()
        for source in passages:
            if source.passage_id != source.given_id:  # a chunk of a long passage
                if source.given_id in existing:
                    raise source.error(f"passage id {shown(source.given_id)} is already stored with different "
                                       "text; give the new passage another id")
                split.add(source.given_id)
            known = existing.get(source.passage_id, new.get(source.passage_id))
            if known is None:
                new[source.passage_id] = source.text
            elif known == source.text:
                unchanged += 1
            else:
                raise source.error(f"passage id {shown(source.passage_id)} is already stored with different "
                                   "text; give the new passage another id")
        owned = {s.passage_id: Augmentation(s.passage_id, s.rewrite or s.text, list(s.qa))
                 for s in passages if s.qa and s.passage_id == s.given_id}
        augmentations = {**(augmentations or {}), **owned}
        if augmentations:
            self._merge_augmentations({k: v for k, v in augmentations.items() if k in new or k in existing})
        if new:
            merged = {**existing, **new}
            table = pa.table({"passage_id": list(merged), "text": list(merged.values())})
            with atomic_path(self.root / PASSAGES) as tmp:
                pq.write_table(table, tmp)
        return IngestReport(added=len(new), unchanged=unchanged, split=len(split))

    def _merge_augmentations(self, extra: dict[str, Augmentation]) -> None:
        path = self.root / AUGMENTATIONS
        rows = {r["passage_id"]: r for r in pq.read_table(path).to_pylist()} if path.is_file() else {}
        for pid, aug in extra.items():
            rows[pid] = {"passage_id": pid, "rewrite": aug.rewrite,
                         "questions": [q for q, _ in aug.qa], "answers": [a for _, a in aug.qa]}
        with atomic_path(path) as tmp:
            pq.write_table(pa.Table.from_pylist(list(rows.values())), tmp)

    def routing(self, pool: ExpertPool, base_digest: str, home: list[int] | None = None) -> torch.Tensor:
        """This site's routing logits ``[P, G, K]`` for ``pool``, in passage order.

        Stored rows are kept (rows of another shape or base model are refused, never dropped);
        passages without one start near zero or, given the site's ``home`` experts, on those
        (logit +3, the others −3), so that sites store their facts in different experts.
        """
        passages = self.passages()
        generator = torch.Generator().manual_seed(int(hashlib.sha256(self.state.site_id.encode()).hexdigest()[:8], 16))
        logits = torch.empty(len(passages), pool.n_groups, pool.n_experts).normal_(0.0, 0.01, generator=generator)
        if home:
            lean = torch.full((pool.n_experts,), -3.0)
            lean[home] = 3.0
            logits += lean
        if (self.root / ROUTING / "manifest.json").is_file():
            stored = load_routing(self.root / ROUTING, pool, base_digest, same_pool=False)
            kept = set(stored.passage_ids)
            rows = [row for row, p in enumerate(passages) if p.passage_id in kept]
            logits[rows] = stored.logits[stored.rows([passages[row].passage_id for row in rows])]
        return logits

    def save_routing(self, routing: RoutingTable, pool: ExpertPool, pool_version: int, base_digest: str) -> None:
        """Keep the rows trained in a round against ``pool`` (version ``pool_version``)."""
        save_routing(self.root / ROUTING, routing, pool, base_digest, pool_version)

    def clear_routing(self) -> None:
        """Drop every routing row (they do not fit a released pool): every passage becomes pending."""
        path = self.root / ROUTING
        if path.exists():
            aside = self.root / f".{ROUTING}.cleared.tmp"  # a killed clear is finished on the next open
            os.replace(path, aside)
            shutil.rmtree(aside)

    def encoded(self, pool: ExpertPool, base_digest: str) -> RoutingTable:
        """The stored routing rows of the passages that have one, in passage order."""
        if not (self.root / ROUTING / "manifest.json").is_file():
            return RoutingTable([], torch.empty(0, pool.n_groups, pool.n_experts))
        stored = load_routing(self.root / ROUTING, pool, base_digest, same_pool=False)
        kept = set(stored.passage_ids)
        ids = [p.passage_id for p in self.passages() if p.passage_id in kept]
        return RoutingTable(ids, stored.logits[stored.rows(ids)])

    def pending(self, pool: ExpertPool, base_digest: str) -> list[Passage]:
        """The passages without a routing row yet, in passage order."""
        encoded = set(self.encoded(pool, base_digest).passage_ids)
        return [p for p in self.passages() if p.passage_id not in encoded]

    def add_routing(self, rows: RoutingTable, pool: ExpertPool, base_digest: str) -> None:
        """Store rows for passages encoded since the last round, beside the rows already kept."""
        stored = self.encoded(pool, base_digest)
        version = self.state.pool_version
        save_routing(self.root / ROUTING, stored.extended(rows), pool, base_digest, version)

    def save_pool(self, pool: ExpertPool, config: PolyConfig, version: int, base_digest: str) -> None:
        """Keep the pool version the coordinator released, with the settings it was trained with."""
        save_pool(self.root / POOL, pool, config, base_digest, version, extra={"settings": config.to_numbers()})

    def pool(self, base_digest: str) -> tuple[ExpertPool, PolyConfig, int] | None:
        """The released pool, its settings and its version; ``None`` before the first release."""
        if not (self.root / POOL / "manifest.json").is_file():
            return None
        pool, manifest = load_pool(self.root / POOL, base_digest)
        return pool, PolyConfig.from_numbers(manifest["settings"]), int(manifest["version"])

    def save_generator(self, encoder: DistilledEncoder, version: int) -> None:
        """Keep the generator version the coordinator released (distilled mode)."""
        distilled_serializer.save(self.root / GENERATOR, encoder, extra={"version": version})

    def generator(self, base: BaseModel, layers: dict[str, LoRALinear]) -> tuple[DistilledEncoder, int] | None:
        """The released generator bound to ``base``, and its version; ``None`` before the first release."""
        if not (self.root / GENERATOR / "manifest.json").is_file():
            return None
        encoder, manifest = distilled_serializer.load_with_manifest(self.root / GENERATOR, base, layers)
        return encoder, int(manifest["version"])
