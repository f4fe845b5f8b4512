"""Bad datasets end with a clear error naming the file and the row; writes are atomic."""

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fedprag.shared.data.augment import cloze_augmenter, dataset_augmentations, own_augmentations
from fedprag.shared.data.benchmark import BenchmarkSpec, make_benchmark
from fedprag.shared.data.schema import (
    MAX_PASSAGE_CHARS,
    PASSAGES_FILE,
    PASSAGES_SCHEMA,
    QUESTIONS_FILE,
    Dataset,
    DatasetError,
    read_dataset,
    write_dataset,
)


@pytest.fixture
def dataset_dir(tmp_path):
    write_dataset(make_benchmark(BenchmarkSpec(people=4)), tmp_path)
    return tmp_path


def _rewrite_passages(directory, rows, schema=PASSAGES_SCHEMA):
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), directory / PASSAGES_FILE)


def _passages(directory):
    return pq.read_table(directory / PASSAGES_FILE).to_pylist()


def test_round_trip(dataset_dir):
    original = make_benchmark(BenchmarkSpec(people=4))
    loaded = read_dataset(dataset_dir)
    assert loaded.passages == original.passages
    assert loaded.questions == original.questions
    assert loaded.augmentations == original.augmentations


def test_missing_directory_and_file(tmp_path, dataset_dir):
    with pytest.raises(DatasetError, match="dataset directory not found"):
        read_dataset(tmp_path / "nope")
    (dataset_dir / QUESTIONS_FILE).unlink()
    with pytest.raises(DatasetError, match=f"{QUESTIONS_FILE}: file not found"):
        read_dataset(dataset_dir)


def test_malformed_file(dataset_dir):
    (dataset_dir / PASSAGES_FILE).write_bytes(b"this is not parquet")
    with pytest.raises(DatasetError, match=f"{PASSAGES_FILE}: not a readable Parquet file"):
        read_dataset(dataset_dir)


def test_missing_column(dataset_dir):
    rows = [{"passage_id": r["passage_id"], "site": r["site"]} for r in _passages(dataset_dir)]
    pq.write_table(pa.Table.from_pylist(rows), dataset_dir / PASSAGES_FILE)
    with pytest.raises(DatasetError, match="missing column 'text'"):
        read_dataset(dataset_dir)


@pytest.mark.parametrize("text, message", [
    ("   ", "column 'text' is empty"),
    ("x" * (MAX_PASSAGE_CHARS + 1), "characters; the limit is"),
])
def test_empty_or_huge_passage_names_the_row(dataset_dir, text, message):
    rows = _passages(dataset_dir)
    rows[2]["text"] = text
    _rewrite_passages(dataset_dir, rows)
    with pytest.raises(DatasetError, match=f"{PASSAGES_FILE}, row 2: .*{message}"):
        read_dataset(dataset_dir)


def test_non_utf8_passage_names_the_row(dataset_dir):
    rows = _passages(dataset_dir)
    binary = pa.schema([("passage_id", pa.string()), ("site", pa.int32()), ("text", pa.binary())])
    for r in rows:
        r["text"] = r["text"].encode()
    rows[1]["text"] = b"caf\xe9 latin-1 bytes"
    _rewrite_passages(dataset_dir, rows, binary)
    with pytest.raises(DatasetError, match=f"{PASSAGES_FILE}, row 1: column 'text' is not valid UTF-8"):
        read_dataset(dataset_dir)


def test_duplicate_ids_name_both_rows(dataset_dir):
    rows = _passages(dataset_dir)
    rows[3]["passage_id"] = rows[0]["passage_id"]
    _rewrite_passages(dataset_dir, rows)
    with pytest.raises(DatasetError, match="row 3: duplicate passage_id .* \\(first seen at row 0\\)"):
        read_dataset(dataset_dir)


def test_gold_passage_must_exist(dataset_dir):
    rows = _passages(dataset_dir)
    _rewrite_passages(dataset_dir, rows[1:])  # drop the first passage; questions still name it
    with pytest.raises(DatasetError, match=f"{QUESTIONS_FILE}, row 0: gold_passage_ids name unknown passages"):
        read_dataset(dataset_dir)


def test_failed_write_leaves_the_old_file_and_no_temporaries(dataset_dir, monkeypatch):
    before = (dataset_dir / PASSAGES_FILE).read_bytes()

    def explode(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(pq, "write_table", explode)
    with pytest.raises(RuntimeError):
        write_dataset(make_benchmark(BenchmarkSpec(people=5, seed=9)), dataset_dir)
    assert (dataset_dir / PASSAGES_FILE).read_bytes() == before
    assert not [f for f in os.listdir(dataset_dir) if f.endswith(".tmp")]


def test_passages_without_an_augmentation_get_the_augmenters():
    dataset = make_benchmark(BenchmarkSpec(people=3, sites=1))
    first, second, third = dataset.passages
    partial = Dataset(dataset.passages, dataset.questions, {first.passage_id: dataset.augmentations[first.passage_id]})
    chosen = dataset_augmentations(partial, cloze_augmenter, [first, second])
    assert set(chosen) == {first.passage_id, second.passage_id}
    assert chosen[first.passage_id] == dataset.augmentations[first.passage_id]
    fallback = chosen[second.passage_id]
    assert fallback.rewrite != second.text and len(fallback.qa) >= 3
    assert all(question.startswith("Complete: ") and answer in second.text for question, answer in fallback.qa)
    assert set(dataset_augmentations(partial, cloze_augmenter)) == {p.passage_id for p in (first, second, third)}
    ignored = dataset_augmentations(own_augmentations(partial, use_dataset=False), cloze_augmenter, [first])
    assert ignored[first.passage_id] != dataset.augmentations[first.passage_id]
