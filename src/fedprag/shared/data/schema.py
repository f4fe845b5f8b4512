"""The dataset schema every fedprag tool reads, and its strict Parquet reader and writer.

A dataset is a directory of Parquet files:

``passages.parquet`` (required)
    ``passage_id`` string, unique · ``site`` int (which data owner holds it) · ``text`` string,
    UTF-8, non-empty, at most ``MAX_PASSAGE_CHARS`` characters.
``questions.parquet`` (required)
    ``question_id`` string, unique · ``text`` string · ``answers`` list<string>, non-empty ·
    ``gold_passage_ids`` list<string>, each naming a passage · ``kind`` string (for example
    ``single``, ``ood``, ``multihop``; results are reported per kind).
``augmentations.parquet`` (optional)
    ``passage_id`` string · ``rewrite`` string · ``qa_questions`` list<string> ·
    ``qa_answers`` list<string> of the same length. Encoding-time QA written by an augmenter; for
    passages it lacks, a model writes them (:mod:`fedprag.shared.data.augment`).

Any problem ends in a :class:`DatasetError` that names the file and the row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from fedprag.shared.io import atomic_path

PASSAGES_FILE = "passages.parquet"
QUESTIONS_FILE = "questions.parquet"
AUGMENTATIONS_FILE = "augmentations.parquet"
MAX_PASSAGE_CHARS = 20_000

PASSAGES_SCHEMA = pa.schema([("passage_id", pa.string()), ("site", pa.int32()), ("text", pa.string())])
QUESTIONS_SCHEMA = pa.schema([
    ("question_id", pa.string()), ("text", pa.string()), ("answers", pa.list_(pa.string())),
    ("gold_passage_ids", pa.list_(pa.string())), ("kind", pa.string()),
])
AUGMENTATIONS_SCHEMA = pa.schema([
    ("passage_id", pa.string()), ("rewrite", pa.string()),
    ("qa_questions", pa.list_(pa.string())), ("qa_answers", pa.list_(pa.string())),
])


class DatasetError(ValueError):
    """A dataset file is missing, malformed, or has a bad row; the message names file and row."""

    def __init__(self, path: Path | str, message: str, row: int | None = None):
        where = f"{path}" if row is None else f"{path}, row {row}"
        super().__init__(f"{where}: {message}")
        self.path, self.row = str(path), row


@dataclass(frozen=True)
class Passage:
    passage_id: str
    site: int
    text: str


@dataclass(frozen=True)
class Question:
    question_id: str
    text: str
    answers: list[str]
    gold_passage_ids: list[str]
    kind: str


@dataclass(frozen=True)
class Augmentation:
    """A passage's encoding-time data: one rewrite and QA pairs (PRAG's augmentation)."""

    passage_id: str
    rewrite: str
    qa: list[tuple[str, str]]


@dataclass
class Dataset:
    passages: list[Passage]
    questions: list[Question]
    augmentations: dict[str, Augmentation] = field(default_factory=dict)

    def passage_index(self) -> dict[str, int]:
        """Map passage id to its row position (the int64 id used in faiss indexes)."""
        return {p.passage_id: i for i, p in enumerate(self.passages)}


def _read_table(path: Path, required: pa.Schema) -> pa.Table:
    if not path.is_file():
        raise DatasetError(path, "file not found")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DatasetError(path, f"not a readable Parquet file ({exc})") from None
    for fld in required:
        if fld.name not in table.column_names:
            raise DatasetError(path, f"missing column '{fld.name}' (expected {required.names})")
    return table


def _text(value: object, path: Path, row: int, column: str, *, allow_empty: bool = False) -> str:
    """A validated UTF-8 string cell; binary cells are decoded strictly."""
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DatasetError(path, f"column '{column}' is not valid UTF-8 ({exc.reason})", row) from None
    if not isinstance(value, str):
        raise DatasetError(path, f"column '{column}' must be a string, got {type(value).__name__}", row)
    if not allow_empty and not value.strip():
        raise DatasetError(path, f"column '{column}' is empty", row)
    return value


def _text_list(value: object, path: Path, row: int, column: str) -> list[str]:
    if not isinstance(value, list) or not value:
        raise DatasetError(path, f"column '{column}' must be a non-empty list of strings", row)
    return [_text(v, path, row, column) for v in value]


def _unique(ids: list[str], path: Path, column: str) -> None:
    first: dict[str, int] = {}
    for row, ident in enumerate(ids):
        if ident in first:
            raise DatasetError(path, f"duplicate {column} '{ident}' (first seen at row {first[ident]})", row)
        first[ident] = row


def read_passages(path: Path) -> list[Passage]:
    """Read and validate a passages file."""
    rows = _read_table(path, PASSAGES_SCHEMA).to_pylist()
    passages = []
    for row, rec in enumerate(rows):
        text = _text(rec["text"], path, row, "text")
        if len(text) > MAX_PASSAGE_CHARS:
            raise DatasetError(path, f"text has {len(text)} characters; the limit is {MAX_PASSAGE_CHARS}", row)
        site = rec["site"]
        if not isinstance(site, int) or site < 0:
            raise DatasetError(path, f"column 'site' must be a non-negative integer, got {site!r}", row)
        passages.append(Passage(_text(rec["passage_id"], path, row, "passage_id"), site, text))
    if not passages:
        raise DatasetError(path, "no passages")
    _unique([p.passage_id for p in passages], path, "passage_id")
    return passages


def read_questions(path: Path, passage_ids: set[str]) -> list[Question]:
    """Read and validate a questions file against the known passage ids."""
    rows = _read_table(path, QUESTIONS_SCHEMA).to_pylist()
    questions = []
    for row, rec in enumerate(rows):
        gold = _text_list(rec["gold_passage_ids"], path, row, "gold_passage_ids")
        unknown = [g for g in gold if g not in passage_ids]
        if unknown:
            raise DatasetError(path, f"gold_passage_ids name unknown passages {unknown}", row)
        questions.append(Question(
            question_id=_text(rec["question_id"], path, row, "question_id"),
            text=_text(rec["text"], path, row, "text"),
            answers=_text_list(rec["answers"], path, row, "answers"),
            gold_passage_ids=gold,
            kind=_text(rec["kind"], path, row, "kind"),
        ))
    if not questions:
        raise DatasetError(path, "no questions")
    _unique([q.question_id for q in questions], path, "question_id")
    return questions


def read_augmentations(path: Path, passage_ids: set[str]) -> dict[str, Augmentation]:
    """Read and validate an augmentations file; every row must name a known passage."""
    out: dict[str, Augmentation] = {}
    for row, rec in enumerate(_read_table(path, AUGMENTATIONS_SCHEMA).to_pylist()):
        pid = _text(rec["passage_id"], path, row, "passage_id")
        if pid not in passage_ids:
            raise DatasetError(path, f"passage_id '{pid}' names no passage", row)
        if pid in out:
            raise DatasetError(path, f"duplicate passage_id '{pid}'", row)
        qs = _text_list(rec["qa_questions"], path, row, "qa_questions")
        ans = _text_list(rec["qa_answers"], path, row, "qa_answers")
        if len(qs) != len(ans):
            raise DatasetError(path, f"{len(qs)} qa_questions but {len(ans)} qa_answers", row)
        out[pid] = Augmentation(pid, _text(rec["rewrite"], path, row, "rewrite"), list(zip(qs, ans)))
    return out


def read_dataset(directory: str | Path) -> Dataset:
    """Read and validate a dataset directory (see the module docstring for the schema)."""
    root = Path(directory)
    if not root.is_dir():
        raise DatasetError(root, "dataset directory not found")
    passages = read_passages(root / PASSAGES_FILE)
    ids = {p.passage_id for p in passages}
    questions = read_questions(root / QUESTIONS_FILE, ids)
    aug_path = root / AUGMENTATIONS_FILE
    augmentations = read_augmentations(aug_path, ids) if aug_path.exists() else {}
    return Dataset(passages, questions, augmentations)


def _write(table: pa.Table, path: Path) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def write_dataset(dataset: Dataset, directory: str | Path) -> None:
    """Write a dataset directory; each file is replaced atomically."""
    root = Path(directory)
    _write(pa.Table.from_pylist(
        [{"passage_id": p.passage_id, "site": p.site, "text": p.text} for p in dataset.passages],
        schema=PASSAGES_SCHEMA), root / PASSAGES_FILE)
    _write(pa.Table.from_pylist(
        [{"question_id": q.question_id, "text": q.text, "answers": q.answers,
          "gold_passage_ids": q.gold_passage_ids, "kind": q.kind} for q in dataset.questions],
        schema=QUESTIONS_SCHEMA), root / QUESTIONS_FILE)
    if dataset.augmentations:
        _write(pa.Table.from_pylist(
            [{"passage_id": a.passage_id, "rewrite": a.rewrite, "qa_questions": [q for q, _ in a.qa],
              "qa_answers": [x for _, x in a.qa]} for a in dataset.augmentations.values()],
            schema=AUGMENTATIONS_SCHEMA), root / AUGMENTATIONS_FILE)
