"""A data owner's source files read into passages: what ``fedprag client ingest`` and the daemon's
inbox accept, checked whole before anything is stored.

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
import dataclasses
import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from fedprag.shared.data.schema import MAX_PASSAGE_CHARS, DatasetError, read_dataset


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


def shown(value: str, limit: int = 60) -> str:
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


def checked(pid: object, text: object, path: Path, row: int | None, *, line: bool = False,
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
        source = checked(item.get("id"), item["text"], path, number, line=True, hash_missing=True)
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
        return [checked(None, t, path, row, hash_missing=True) for row, t in enumerate(texts)]
    return [checked(i, t, path, row) for row, (i, t) in enumerate(zip(ids, texts))]


def _read_folder(path: Path) -> list[SourcePassage]:
    if (path / "passages.parquet").is_file() and (path / "questions.parquet").is_file():
        return [SourcePassage(p.passage_id, p.text, path / "passages.parquet", row, False, p.passage_id, p.text)
                for row, p in enumerate(read_dataset(path).passages)]
    files = sorted(path.glob("*.txt"))
    if not files:
        raise DatasetError(path, "no .txt files (and not a dataset directory)")
    return [checked(f.stem, _decode(_read_bytes(f), f, line=False), f, None) for f in files]


def _read_sources(path: Path) -> list[SourcePassage]:
    """Checked passages from a JSONL, Parquet or ``.txt`` file, or a folder of ``.txt`` files (not split)."""
    if path.is_dir():
        return _read_folder(path)
    if path.suffix not in (".jsonl", ".parquet", ".txt"):
        raise DatasetError(path, "ingest takes .jsonl, .parquet, .txt or a folder of .txt files")
    if not path.exists():
        raise DatasetError(path, "no such file")
    if path.suffix == ".txt":
        return [checked(path.stem, _decode(_read_bytes(path), path, line=False), path, None)]
    return _read_jsonl(path) if path.suffix == ".jsonl" else _read_parquet(path)


def prepared(rows: Iterable[SourcePassage]) -> list[SourcePassage]:
    """Refuse an id given twice with different texts (naming both rows); split long passages."""
    first: dict[str, SourcePassage] = {}
    out: list[SourcePassage] = []
    for source in rows:
        earlier = first.setdefault(source.given_id, source)
        if earlier.whole != source.whole:
            raise source.error(f"passage id {shown(source.given_id)} is also given at {earlier.where} "
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
            raise source.error(f"passage id {shown(source.passage_id)} is also given at {earlier.where} "
                               "with different text; give one of them another id")
    return out


def read_sources(sources: Iterable[str | Path]) -> list[SourcePassage]:
    """Read and check every source of one ingest, before any store is touched (see the module docstring)."""
    rows: list[SourcePassage] = []
    for source in sources:
        rows += _read_sources(Path(source))
    return prepared(rows)
