"""`fedprag client ingest` on bad input: one error naming file and row, exit 2, nothing half-written."""

import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fedprag.client.sources import split_passage
from fedprag.client.store import SiteStore
from fedprag.shared.data.schema import MAX_PASSAGE_CHARS, DatasetError

GOOD = {"g1": "Kara was born in 1873.", "g2": "Lo plays the harp."}


@pytest.fixture()
def store(tmp_path):
    """A store that already holds two good passages."""
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in GOOD.items()))
    site = SiteStore(tmp_path / "site", site_id="site-a")
    site.ingest([good])
    return site


def stored(store):
    return {p.passage_id: p.text for p in store.passages()}


def refused(store, source, *names, match=None):
    """Ingest ``source`` beside a good file; it must fail naming ``names`` and store nothing."""
    fresh = source.parent / "fresh.jsonl"
    fresh.write_text(json.dumps({"id": "fresh", "text": "Mi grew up in Quessa."}) + "\n")
    before = stored(store)
    with pytest.raises(DatasetError, match=match) as caught:
        store.ingest([fresh, source])  # the good file comes first: it must not be stored either
    message = str(caught.value)
    assert "\n" not in message
    for name in names:
        assert name in message, message
    assert stored(store) == before
    return caught.value


def run_cli(site_dir, *sources):
    env = {**os.environ, "TQDM_DISABLE": "1"}
    return subprocess.run([sys.executable, "-m", "fedprag.cli", "client", "ingest", str(site_dir),
                           *map(str, sources)], check=False, capture_output=True, text=True, timeout=240, env=env)


def assert_cli_refuses(store, bad, *names):
    before = stored(store)
    result = run_cli(store.root, bad)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("fedprag: error: ")
    for name in (bad.name, *names):
        assert name in lines[0], lines[0]
    assert stored(SiteStore(store.root)) == before
    return lines[0]


def test_a_latin1_txt_file_is_refused_naming_the_file(store, tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text("Fine text.", encoding="utf-8")
    (folder / "café.txt").write_bytes("Le café est chaud.".encode("latin-1"))
    error = refused(store, folder, "café.txt", match="not valid UTF-8")
    assert error.row is None


def test_a_non_utf8_txt_file_through_the_cli_exits_2_with_one_line(store, tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "b.txt").write_bytes("Straße".encode("utf-16"))
    assert "not valid UTF-8" in assert_cli_refuses(store, folder, "b.txt")


def test_a_non_utf8_jsonl_line_is_refused_naming_the_line(store, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"id": "a", "text": "ok"}\n{"id": "b", "text": "caf\xe9"}\n')
    error = refused(store, bad, "bad.jsonl:2", match="not valid UTF-8")
    assert (error.path, error.row) == (str(bad), 2)


def test_a_truncated_parquet_file_is_refused(store, tmp_path):
    whole = tmp_path / "whole.parquet"
    pq.write_table(pa.table({"passage_id": ["p1", "p2"], "text": ["One.", "Two."]}), whole)
    bad = tmp_path / "cut.parquet"
    bad.write_bytes(whole.read_bytes()[: len(whole.read_bytes()) // 2])
    refused(store, bad, "cut.parquet", match="not a readable Parquet file")


def test_a_truncated_parquet_file_through_the_cli_exits_2_with_one_line(store, tmp_path):
    whole = tmp_path / "whole.parquet"
    pq.write_table(pa.table({"passage_id": ["p1"], "text": ["One."]}), whole)
    bad = tmp_path / "cut.parquet"
    bad.write_bytes(whole.read_bytes()[:-7])
    assert "not a readable Parquet file" in assert_cli_refuses(store, bad)


def test_a_null_parquet_id_is_refused_not_stored_as_none(store, tmp_path):
    bad = tmp_path / "ids.parquet"
    pq.write_table(pa.table({"passage_id": ["p1", None, None], "text": ["One.", "Two.", "Three."]}), bad)
    error = refused(store, bad, "ids.parquet, row 1", match="got null")
    assert error.row == 1
    assert "None" not in stored(store)


def test_a_null_parquet_text_is_refused(store, tmp_path):
    bad = tmp_path / "texts.parquet"
    pq.write_table(pa.table({"passage_id": ["p1", "p2"], "text": ["One.", None]}), bad)
    refused(store, bad, "texts.parquet, row 1", match="text must be a string, got null")


def test_an_integer_text_is_refused(store, tmp_path):
    bad = tmp_path / "ints.parquet"
    pq.write_table(pa.table({"passage_id": ["p1"], "text": [42]}), bad)
    refused(store, bad, "ints.parquet, row 0", match="text must be a string, got int")
    line = tmp_path / "ints.jsonl"
    line.write_text(json.dumps({"id": "p1", "text": 42}) + "\n")
    refused(store, line, "ints.jsonl:1", match="needs a string field 'text'")


@pytest.mark.parametrize("bad_id, kind", [(None, "null"), (1.5, "float"), (["a"], "list"), ("", "empty"),
                                          (True, "bool")])
def test_ids_must_be_non_empty_strings_or_integers(store, tmp_path, bad_id, kind):
    bad = tmp_path / "ids.jsonl"
    bad.write_text(json.dumps({"id": "ok", "text": "Fine."}) + "\n" + json.dumps({"id": bad_id, "text": "Two."}) + "\n")
    refused(store, bad, "ids.jsonl:2", kind)


def test_integer_ids_are_stored_as_strings(store, tmp_path):
    good = tmp_path / "ints.parquet"
    pq.write_table(pa.table({"id": [7, 8], "text": ["Seven.", "Eight."]}), good)
    assert store.ingest([good]).added == 2
    assert {"7": "Seven.", "8": "Eight."}.items() <= stored(store).items()


def test_a_2mb_passage_is_split_into_chunks_within_the_limit(store, tmp_path):
    sentences = [f"Sentence number {i} tells of Kara and the harp{'!' if i % 7 else '.'}" for i in range(40_000)]
    text = " ".join(sentences) + " " + "x" * 50_000  # ends in a run no boundary can split
    assert len(text) > 2_000_000
    source = tmp_path / "huge.jsonl"
    source.write_text(json.dumps({"id": "big", "text": text}) + "\n")
    report = store.ingest([source])
    chunks = {pid: t for pid, t in stored(store).items() if pid.startswith("big")}
    assert "big" not in chunks
    ids = [f"big#{k}" for k in range(1, len(chunks) + 1)]
    assert sorted(chunks) == sorted(ids) and report.added == len(ids) and report.split == 1
    assert all(0 < len(t) <= MAX_PASSAGE_CHARS for t in chunks.values())
    assert len(ids) <= len(text) // (MAX_PASSAGE_CHARS // 2) + 2  # no needlessly small chunks
    position = 0  # the chunks reassemble to the text, but for the whitespace at the cuts
    for pid in ids:
        while text[position].isspace():
            position += 1
        assert text.startswith(chunks[pid], position)
        position += len(chunks[pid])
    assert position == len(text)
    assert all(chunks[pid].endswith((".", "!")) for pid in ids[:-4])  # cut at sentence ends
    assert split_passage(text) == [chunks[pid] for pid in ids]  # deterministic ...
    again = store.ingest([source])  # ... so re-ingesting the file adds nothing
    assert (again.added, again.unchanged) == (0, len(ids))
    assert set(GOOD.items()) <= set(stored(store).items())


def test_an_empty_passage_is_refused(store, tmp_path):
    bad = tmp_path / "empty.jsonl"
    bad.write_text(json.dumps({"id": "a", "text": "Fine."}) + "\n" + json.dumps({"id": "b", "text": " \n\t"}) + "\n")
    refused(store, bad, "empty.jsonl:2", match="text is empty")
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "blank.txt").write_text("   \n")
    refused(store, folder, "blank.txt", match="text is empty")


def test_the_same_id_twice_with_other_text_names_both_rows(store, tmp_path):
    bad = tmp_path / "twice.parquet"
    pq.write_table(pa.table({"passage_id": ["a", "b", "a"], "text": ["One.", "Two.", "Another one."]}), bad)
    refused(store, bad, "twice.parquet, row 2", "twice.parquet, row 0", match="also given at")
    first = tmp_path / "first.jsonl"
    first.write_text(json.dumps({"id": "a", "text": "One."}) + "\n")
    second = tmp_path / "second.jsonl"
    second.write_text(json.dumps({"id": "a", "text": "Two."}) + "\n")
    before = stored(store)
    with pytest.raises(DatasetError, match="also given at") as caught:
        store.ingest([first, second])
    assert "second.jsonl:1" in str(caught.value) and "first.jsonl:1" in str(caught.value)
    assert stored(store) == before


def test_the_same_id_twice_with_the_same_text_is_fine(store, tmp_path):
    twice = tmp_path / "twice.jsonl"
    twice.write_text(2 * (json.dumps({"id": "a", "text": "One."}) + "\n"))
    report = store.ingest([twice])
    assert (report.added, report.unchanged) == (1, 1)


def test_an_id_stored_with_other_text_is_refused_naming_file_and_row(store, tmp_path):
    clash = tmp_path / "clash.parquet"
    pq.write_table(pa.table({"passage_id": ["new", "g1"], "text": ["New.", "Something else."]}), clash)
    refused(store, clash, "clash.parquet, row 1", "'g1'", match="already stored with different text")


def test_a_cli_clash_exits_2_and_a_fresh_site_is_not_created(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "text": "One."}\n{"id": null, "text": "Two."}\n')
    result = run_cli(tmp_path / "new-site", bad)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "bad.jsonl:2" in result.stderr
    assert not (tmp_path / "new-site").exists()  # the store is created only once the input is good
