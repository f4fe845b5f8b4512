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

Ingestion is all or nothing. Every source of one ``ingest`` call is read and checked before the
store is written; any bad input ends in one :class:`DatasetError` that names the file and the
row (``file.jsonl:LINE`` with lines counted from 1; ``file.parquet, row N`` with rows counted from
0, as in the dataset reader; the file itself for a ``.txt`` file) and nothing of that call is
stored. Refused: a file that is not UTF-8 (a leading UTF-8 byte-order mark is allowed) or not
readable Parquet; a line that is not a JSON object; a missing, null or non-string text (a Parquet
binary cell must hold UTF-8); an empty or whitespace-only text; an id that is null, empty, a
float, a list or anything but a non-empty string or an integer (integers are stored as their
decimal string; a missing id is a hash of the text); an id given twice in one call with different
texts (both places are named); an id already stored with different text.

A JSONL row may also carry the owner's own encoding-time QA pairs, ``"qa": [[question, answer],
...]`` (non-empty strings), and optionally a ``"rewrite"``; they are kept in
``augmentations.parquet`` and win over any generated augmentation.

Passages longer than :data:`~fedprag.shared.data.schema.MAX_PASSAGE_CHARS` (the dataset limit)
are split, not refused: into chunks of at most that many characters, cut at the last sentence end
(else the last whitespace, else hard at the limit) of each window, dropping the whitespace at the
cut, and stored as ``<id>#1``, ``<id>#2``, …. The split is deterministic, so re-ingesting the same
file stays idempotent. Passages within the limit keep their id unchanged.
"""

from __future__ import annotations

import codecs
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from fedprag.shared.data.augment import Augmenter, complete
from fedprag.shared.data.schema import MAX_PASSAGE_CHARS, Augmentation, DatasetError, Passage, read_dataset
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


def passage_id_for(text: str) -> str:
    """A stable id for a passage that came without one: a hash of its text."""
    return "h" + hashlib.sha256(text.encode()).hexdigest()[:20]


# A sentence end: terminal punctuation, closing quotes or brackets, then whitespace (the cut lies
# before the whitespace); CJK full stops need no whitespace after them.
_SENTENCE_END = re.compile(r"[.!?…][\"'”’»)\]]*(?=\s)|[。！？][」』”’）]*")


def split_passage(text: str, limit: int = MAX_PASSAGE_CHARS) -> list[str]:
    """``text`` in chunks of at most ``limit`` characters (see the module docstring); deterministic."""
    if len(text) <= limit:
        return [text]
    chunks: list[str] = []
    start, end = 0, len(text)
    while end - start > limit:
        window_end = start + limit + 1  # one past the limit: whitespace right after a full chunk counts
        cut = 0
        for match in _SENTENCE_END.finditer(text, start + limit // 2, window_end):
            if match.end() - start <= limit:
                cut = match.end()
        if not cut:
            cut = next((i for i in range(window_end - 1, start, -1) if text[i].isspace()), 0)
        if not cut:
            cut = start + limit
        chunk = text[start:cut].rstrip()
        if chunk.strip():
            chunks.append(chunk)
        start = cut
        while start < end and text[start].isspace():
            start += 1
    if text[start:].strip():
        chunks.append(text[start:])
    return chunks


def _one_line(detail: object, limit: int = 200) -> str:
    """An exception's text on one line, cut to ``limit`` characters (error messages are one line)."""
    flat = " ".join(str(detail).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _show(value: str, limit: int = 60) -> str:
    """An id for an error message: quoted, escaped, and cut short."""
    return repr(value if len(value) <= limit else value[: limit - 1] + "…")


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _error(path: Path | str, row: int | None, message: str, *, line: bool = False) -> DatasetError:
    """A DatasetError; JSONL lines read ``file:LINE: message``, Parquet rows ``file, row N: message``."""
    if line and row is not None:
        error = DatasetError(f"{path}:{row}", message)
        error.path, error.row = str(path), row
        return error
    return DatasetError(path, message, row)


def _decode(data: bytes, path: Path, *, line: bool) -> str:
    """Strict UTF-8 (an optional byte-order mark is dropped); a bad byte names its line in JSONL."""
    data = data.removeprefix(codecs.BOM_UTF8)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        if line:
            number = data.count(b"\n", 0, exc.start) + 1
            column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1)
            raise _error(path, number, f"not valid UTF-8 ({exc.reason} at byte {column} of the line); "
                                       "save the file as UTF-8", line=True) from None
        raise DatasetError(path, f"not valid UTF-8 text ({exc.reason} at byte {exc.start}); "
                                 "save the file as UTF-8") from None


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DatasetError(path, f"cannot read the file ({_one_line(exc.strerror or exc)})") from None


@dataclass(frozen=True)
class SourcePassage:
    """One passage as read from a source: checked, and one chunk of it if it was over the limit."""

    passage_id: str
    text: str
    path: Path
    row: int | None = None  # JSONL line (from 1) or Parquet row (from 0); None for a .txt file
    line: bool = False      # ``row`` is a JSONL line number
    given_id: str = ""      # the id in the source (default: passage_id); differs for a chunk ('<id>#k')
    whole: str = ""         # the source's whole text (default: text); differs for a chunk
    qa: tuple[tuple[str, str], ...] = ()  # the owner's QA pairs for this passage (JSONL "qa")
    rewrite: str = ""       # the owner's rewrite (JSONL "rewrite"; default: the text)

    def __post_init__(self) -> None:
        if not self.given_id:
            object.__setattr__(self, "given_id", self.passage_id)
        if not self.whole:
            object.__setattr__(self, "whole", self.text)

    @property
    def where(self) -> str:
        if self.row is None:
            return str(self.path)
        return f"{self.path}:{self.row}" if self.line else f"{self.path}, row {self.row}"

    def error(self, message: str) -> DatasetError:
        return _error(self.path, self.row, message, line=self.line)


def _checked(pid: object, text: object, path: Path, row: int | None, *, line: bool = False,
             hash_missing: bool = False) -> SourcePassage:
    """One source row with a valid id and text, or a DatasetError naming file and row."""

    def refuse(message: str) -> DatasetError:
        return _error(path, row, message, line=line)

    def unicode(value: object, what: str) -> object:
        """``value`` as text if it is text (UTF-8 bytes decoded), refusing what is not valid Unicode."""
        try:
            value = value.decode("utf-8") if isinstance(value, bytes) else value
            if isinstance(value, str):
                value.encode("utf-8")
            return value
        except UnicodeError as exc:
            raise refuse(f"{what} is not valid UTF-8 ({exc.reason})") from None

    text = unicode(text, "text")
    if not isinstance(text, str):
        raise refuse(f"text must be a string, got {_kind(text)}")
    if not text.strip():
        raise refuse("text is empty")
    if pid is None and hash_missing:
        pid = passage_id_for(text)
    pid = unicode(pid, "passage id")
    if isinstance(pid, int) and not isinstance(pid, bool):
        pid = str(pid)
    if not isinstance(pid, str):
        raise refuse(f"passage id must be a non-empty string or an integer, got {_kind(pid)}")
    if not pid.strip():
        raise refuse("passage id is empty")
    return SourcePassage(pid, text, path, row, line, pid, text)


def _read_jsonl(path: Path) -> list[SourcePassage]:
    text = _decode(_read_bytes(path), path, line=True)
    rows = []
    for number, line in enumerate(text.split("\n"), 1):  # JSON strings may hold U+2028 and the like
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise _error(path, number, f"not JSON ({exc.msg} at column {exc.colno})", line=True) from None
        except (ValueError, RecursionError) as exc:  # an integer too long, nesting too deep
            raise _error(path, number, f"not usable JSON ({_one_line(exc) or type(exc).__name__})",
                         line=True) from None
        if not isinstance(item, dict) or not isinstance(item.get("text"), str):
            raise _error(path, number, "needs a string field 'text'", line=True)
        if "id" in item and item["id"] is None:
            raise _error(path, number, "passage id must be a non-empty string or an integer, got null "
                                       "(leave 'id' out to use a hash of the text)", line=True)
        source = _checked(item.get("id"), item["text"], path, number, line=True, hash_missing=True)
        if "qa" in item or "rewrite" in item:
            source = dataclasses.replace(source, qa=_qa_pairs(item.get("qa", []), path, number),
                                         rewrite=_rewrite(item.get("rewrite", ""), path, number))
        rows.append(source)
    return rows


def _qa_pairs(value: object, path: Path, number: int) -> tuple[tuple[str, str], ...]:
    """A JSONL row's ``qa``: a list of [question, answer] pairs of non-empty strings."""
    if not isinstance(value, list) or not all(
            isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) and x.strip() for x in pair)
            for pair in value):
        raise _error(path, number, "'qa' must be a list of [question, answer] pairs of non-empty strings", line=True)
    return tuple((q, a) for q, a in value)


def _rewrite(value: object, path: Path, number: int) -> str:
    if not isinstance(value, str):
        raise _error(path, number, f"'rewrite' must be a string, got {_kind(value)}", line=True)
    return value


# What reading a damaged Parquet file can raise, from pyarrow or while converting its cells.
_PARQUET_ERRORS = (pa.ArrowException, OSError, ValueError, TypeError, KeyError, IndexError,
                   NotImplementedError, MemoryError, OverflowError)


def _read_parquet(path: Path) -> list[SourcePassage]:
    try:
        names = pq.read_schema(path).names
        if "text" not in names:
            raise DatasetError(path, "needs a 'text' column")
        key = next((c for c in ("passage_id", "id") if c in names), None)
        table = pq.read_table(path, columns=["text"] + ([key] if key else []))
        texts = table.column("text").to_pylist()
        ids = table.column(key).to_pylist() if key else None
    except DatasetError:
        raise
    except _PARQUET_ERRORS as exc:
        raise DatasetError(path, f"not a readable Parquet file ({_one_line(exc) or type(exc).__name__})") from None
    if ids is None:
        return [_checked(None, t, path, row, hash_missing=True) for row, t in enumerate(texts)]
    return [_checked(i, t, path, row) for row, (i, t) in enumerate(zip(ids, texts))]


def _read_folder(path: Path) -> list[SourcePassage]:
    if (path / PASSAGES).is_file() and (path / "questions.parquet").is_file():
        return [SourcePassage(p.passage_id, p.text, path / PASSAGES, row, False, p.passage_id, p.text)
                for row, p in enumerate(read_dataset(path).passages)]
    files = sorted(path.glob("*.txt"))
    if not files:
        raise DatasetError(path, "no .txt files (and not a dataset directory)")
    return [_checked(f.stem, _decode(_read_bytes(f), f, line=False), f, None) for f in files]


def _read_sources(path: Path) -> list[SourcePassage]:
    """Checked passages from a JSONL, Parquet or ``.txt`` file, or a folder of ``.txt`` files (not split)."""
    if path.is_dir():
        return _read_folder(path)
    if path.suffix not in (".jsonl", ".parquet", ".txt"):
        raise DatasetError(path, "ingest takes .jsonl, .parquet, .txt or a folder of .txt files")
    if not path.exists():
        raise DatasetError(path, "no such file")
    if path.suffix == ".txt":
        return [_checked(path.stem, _decode(_read_bytes(path), path, line=False), path, None)]
    return _read_jsonl(path) if path.suffix == ".jsonl" else _read_parquet(path)


def _prepare(rows: Iterable[SourcePassage]) -> list[SourcePassage]:
    """Refuse an id given twice with different texts (naming both rows); split long passages."""
    first: dict[str, SourcePassage] = {}
    out: list[SourcePassage] = []
    for source in rows:
        earlier = first.setdefault(source.given_id, source)
        if earlier.whole != source.whole:
            raise source.error(f"passage id {_show(source.given_id)} is also given at {earlier.where} "
                               "with different text; give one of them another id")
        chunks = split_passage(source.whole)
        if len(chunks) == 1:
            out.append(source)
            continue
        out += [SourcePassage(f"{source.given_id}#{k}", chunk, source.path, source.row, source.line,
                              source.given_id, source.whole) for k, chunk in enumerate(chunks, 1)]
    # A chunk id can still meet an id given as such ('x#1' beside a long 'x').
    seen: dict[str, SourcePassage] = {}
    for source in out:
        earlier = seen.setdefault(source.passage_id, source)
        if earlier.text != source.text:
            raise source.error(f"passage id {_show(source.passage_id)} is also given at {earlier.where} "
                               "with different text; give one of them another id")
    return out


def read_sources(sources: Iterable[str | Path]) -> list[SourcePassage]:
    """Read and check every source of one ingest, before any store is touched (see the module docstring)."""
    rows: list[SourcePassage] = []
    for source in sources:
        rows += _read_sources(Path(source))
    return _prepare(rows)


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
        rows = [_checked(pid, text, self.root, row) for row, (pid, text) in enumerate(pairs)]
        return self.add_read(_prepare(rows), augmentations)

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
                    raise source.error(f"passage id {_show(source.given_id)} is already stored with different "
                                       "text; give the new passage another id")
                split.add(source.given_id)
            known = existing.get(source.passage_id, new.get(source.passage_id))
            if known is None:
                new[source.passage_id] = source.text
            elif known == source.text:
                unchanged += 1
            else:
                raise source.error(f"passage id {_show(source.passage_id)} is already stored with different "
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
