"""The site store: a data owner's passages and their private encoding, in one data directory.

Layout of ``<data_dir>``::

    passages.parquet        passage_id, text (the only copy of the text; it never leaves)
    augmentations.parquet   optional encoding-time QA, if the owner supplied it
    routing/                the site's private routing rows (safetensors + manifest)
    state.json              site id, rounds joined, pool version

Every file is replaced atomically, so a crash mid-ingest leaves the previous complete state.
Ingestion is idempotent: a passage is keyed by its id (given, or a hash of its text), re-ingesting
the same passages adds nothing, and an id that comes back with different text is an error rather
than a silent overwrite.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from shared.data.augment import cloze_augmentation
from shared.data.schema import Augmentation, DatasetError, Passage, read_dataset
from shared.io import atomic_path, atomic_write_text
from shared.lora.store import load_encoding, save_encoding
from shared.methods.poly.layers import RoutingTable

PASSAGES = "passages.parquet"
AUGMENTATIONS = "augmentations.parquet"
ROUTING = "routing"
STATE = "state.json"
_ROUTING_METHOD = "poly_site_routing"


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


def passage_id_for(text: str) -> str:
    """A stable id for a passage that came without one: a hash of its text."""
    return "h" + hashlib.sha256(text.encode()).hexdigest()[:20]


def _read_sources(path: Path) -> list[tuple[str, str]]:
    """(id, text) pairs from a JSONL file, a Parquet file or a folder of ``.txt`` files."""
    if path.is_dir():
        if (path / PASSAGES).is_file() and (path / "questions.parquet").is_file():
            return [(p.passage_id, p.text) for p in read_dataset(path).passages]
        files = sorted(path.glob("*.txt"))
        if not files:
            raise DatasetError(path, "no .txt files (and not a dataset directory)")
        return [(f.stem, f.read_text(encoding="utf-8")) for f in files]
    if path.suffix == ".jsonl":
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}:{number}", f"not JSON ({exc.msg})") from None
            if not isinstance(item, dict) or not isinstance(item.get("text"), str):
                raise DatasetError(f"{path}:{number}", "needs a string field 'text'")
            rows.append((str(item.get("id") or passage_id_for(item["text"])), item["text"]))
        return rows
    if path.suffix == ".parquet":
        table = pq.read_table(path)
        if "text" not in table.column_names:
            raise DatasetError(path, "needs a 'text' column")
        texts = table.column("text").to_pylist()
        key = next((c for c in ("passage_id", "id") if c in table.column_names), None)
        ids = table.column(key).to_pylist() if key else [passage_id_for(t) for t in texts]
        return [(str(i), t) for i, t in zip(ids, texts)]
    raise DatasetError(path, "ingest takes .jsonl, .parquet or a folder of .txt files")


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

    def save_state(self) -> None:
        atomic_write_text(self.root / STATE, json.dumps(asdict(self.state), indent=2))

    def passages(self) -> list[Passage]:
        path = self.root / PASSAGES
        if not path.is_file():
            return []
        table = pq.read_table(path)
        return [Passage(i, 0, t) for i, t in zip(table.column("passage_id").to_pylist(), table.column("text").to_pylist())]

    def augmentations(self) -> dict[str, Augmentation]:
        """The owner's augmentation where supplied, else the cloze fallback."""
        supplied: dict[str, Augmentation] = {}
        path = self.root / AUGMENTATIONS
        if path.is_file():
            for row in pq.read_table(path).to_pylist():
                supplied[row["passage_id"]] = Augmentation(row["passage_id"], row["rewrite"],
                                                           [(q, a) for q, a in zip(row["questions"], row["answers"])])
        return {p.passage_id: supplied.get(p.passage_id) or cloze_augmentation(p) for p in self.passages()}

    def ingest(self, sources: Iterable[str | Path]) -> IngestReport:
        """Add passages from JSONL, Parquet or text-folder sources (see the module docstring)."""
        pairs: list[tuple[str, str]] = []
        for source in sources:
            pairs += _read_sources(Path(source))
        return self.add_passages(pairs)

    def add_passages(self, pairs: Iterable[tuple[str, str]],
                     augmentations: dict[str, Augmentation] | None = None) -> IngestReport:
        """Add (id, text) passages and, optionally, their augmentation; idempotent and atomic."""
        existing = {p.passage_id: p.text for p in self.passages()}
        new: dict[str, str] = {}
        unchanged = 0
        for pid, text in pairs:
            if not text.strip():
                raise DatasetError(self.root, f"passage '{pid}' is empty")
            known = existing.get(pid, new.get(pid))
            if known is None:
                new[pid] = text
            elif known == text:
                unchanged += 1
            else:
                raise DatasetError(self.root, f"passage id '{pid}' is already stored with different text; "
                                              "give the new passage another id")
        if augmentations:
            self._merge_augmentations({k: v for k, v in augmentations.items() if k in new or k in existing})
        if new:
            merged = {**existing, **new}
            table = pa.table({"passage_id": list(merged), "text": list(merged.values())})
            with atomic_path(self.root / PASSAGES) as tmp:
                pq.write_table(table, tmp)
        return IngestReport(added=len(new), unchanged=unchanged)

    def _merge_augmentations(self, extra: dict[str, Augmentation]) -> None:
        path = self.root / AUGMENTATIONS
        rows = {r["passage_id"]: r for r in pq.read_table(path).to_pylist()} if path.is_file() else {}
        for pid, aug in extra.items():
            rows[pid] = {"passage_id": pid, "rewrite": aug.rewrite,
                         "questions": [q for q, _ in aug.qa], "answers": [a for _, a in aug.qa]}
        with atomic_path(path) as tmp:
            pq.write_table(pa.Table.from_pylist(list(rows.values())), tmp)

    def routing(self, n_groups: int, n_experts: int, base_digest: str, home: list[int] | None = None) -> torch.Tensor:
        """This site's routing logits ``[P, G, K]`` in passage order.

        Stored rows are kept; new passages start near zero or, given the site's ``home`` experts,
        on those (logit +3, the others −3), so that sites store their facts in different experts.
        """
        passages = self.passages()
        generator = torch.Generator().manual_seed(int(hashlib.sha256(self.state.site_id.encode()).hexdigest()[:8], 16))
        logits = torch.empty(len(passages), n_groups, n_experts).normal_(0.0, 0.01, generator=generator)
        if home:
            lean = torch.full((n_experts,), -3.0)
            lean[home] = 3.0
            logits += lean
        if (self.root / ROUTING / "manifest.json").is_file():
            tensors, manifest = load_encoding(self.root / ROUTING, _ROUTING_METHOD, base_digest)
            stored = RoutingTable(manifest["passage_ids"], tensors["logits"])
            if stored.logits.shape[1:] == (n_groups, n_experts):
                position = {pid: i for i, pid in enumerate(stored.passage_ids)}
                for row, p in enumerate(passages):
                    if p.passage_id in position:
                        logits[row] = stored.logits[position[p.passage_id]]
        return logits

    def save_routing(self, routing: RoutingTable, pool_version: int, base_digest: str) -> None:
        manifest = {"method": _ROUTING_METHOD, "format_version": 1, "base_model_digest": base_digest,
                    "pool_version": pool_version, "passage_ids": routing.passage_ids}
        save_encoding(self.root / ROUTING, {"logits": routing.logits}, manifest)

