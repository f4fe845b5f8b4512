"""Fuzzing `SiteStore.ingest` with over a thousand malformed files: no traceback, nothing lost.

A seeded generator (no extra dependencies) writes files from these families: wrong encodings in
.txt and .jsonl; Parquet cut at random lengths; Parquet with nulls, wrong column types or missing
columns; huge and empty passages; ids given twice with other text; invalid JSON lines. Each file is
ingested on its own into a store that starts with known good passages. Every outcome must be a
success or a DatasetError, a refused file must leave the store exactly as it was, and at the end
every good passage must still be there with its text. Run with ``pytest -s`` to see the figures.
"""

import io
import json
import random
import time
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq

from fedprag.client.store import SiteStore
from fedprag.shared.data.schema import MAX_PASSAGE_CHARS, DatasetError

SEED = 20240611
ROUNDS = 1_100  # malformed inputs, besides the few huge ones
WORDS = ["Kara", "was", "born", "in", "1873.", "Lo", "plays", "the", "harp!", "Mi", "grew", "up", "Quessa?",
         "café", "Straße", "naïve", "日本語。", "ünïcödé", "—", "“quoted.”", "emoji🎻", "\n", "\t"]
GOOD = {f"good-{i}": f"Good passage {i}: Kara number {i} was born in {1800 + i} and plays the harp."
        for i in range(25)}


def sentence(rng, words=8):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, words)))


def parquet_bytes(table):
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def valid_parquet(rng, n):
    return parquet_bytes(pa.table({"passage_id": [f"v{rng.randrange(10**9)}" for _ in range(n)],
                                   "text": [sentence(rng) + "." for _ in range(n)]}))


def bad_encoding(rng):
    text = sentence(rng, 20) + " café Straße naïve"
    choice = rng.randrange(4)
    if choice == 0:
        return "latin-1", text.encode("latin-1", errors="replace")
    if choice == 1:
        return "utf-16", text.encode(rng.choice(["utf-16", "utf-16-le", "utf-16-be"]))
    if choice == 2:
        return "cp1252", (text + " “curly”").encode("cp1252", errors="replace")
    return "random-bytes", bytes(rng.randrange(256) for _ in range(rng.randint(0, 300)))


def txt_wrong_encoding(rng, folder, n):
    kind, data = bad_encoding(rng)
    (folder / f"t{n}.txt").write_bytes(data)
    if rng.random() < 0.5:
        (folder / f"ok{n}.txt").write_text(sentence(rng) + ".", encoding="utf-8")
    return f"txt-{kind}", folder


def jsonl_wrong_encoding(rng, folder, n):
    kind, data = bad_encoding(rng)
    if kind != "random-bytes":
        line = json.dumps({"id": f"e{n}", "text": sentence(rng, 20) + " café Straße"}, ensure_ascii=False)
        codec = {"latin-1": "latin-1", "cp1252": "cp1252", "utf-16": "utf-16"}[kind]
        data = line.encode(codec, errors="replace")
    good = "".join(json.dumps({"id": f"e{n}-{k}", "text": sentence(rng)}) + "\n" for k in range(rng.randint(0, 3)))
    path = folder / f"e{n}.jsonl"
    path.write_bytes(good.encode() + data + b"\n")
    return f"jsonl-{kind}", path


def truncated_parquet(rng, folder, n):
    data = valid_parquet(rng, rng.randint(1, 6))
    path = folder / f"cut{n}.parquet"
    path.write_bytes(data[: rng.randrange(len(data))])
    return "parquet-truncated", path


def column(rng, kind, n):
    """A column of ``n`` cells of one malformed (or, for 'string', good) kind."""
    if kind == "string":
        return pa.array([sentence(rng) for _ in range(n)], pa.string())
    if kind == "nulls":
        return pa.array([None if rng.random() < 0.5 else sentence(rng) for _ in range(n - 1)] + [None],
                        pa.string())
    if kind == "all-null":
        return pa.nulls(n)
    if kind == "int":
        return pa.array([rng.randrange(-10**12, 10**12) for _ in range(n)], pa.int64())
    if kind == "float":
        return pa.array([rng.choice([1.5, float("nan"), 3.0, -0.0, float("inf")]) for _ in range(n)], pa.float64())
    if kind == "list":
        return pa.array([[sentence(rng)] for _ in range(n)], pa.list_(pa.string()))
    if kind == "binary-utf8":
        return pa.array([sentence(rng).encode() for _ in range(n)], pa.binary())
    if kind == "binary-bad":
        return pa.array([bytes(rng.randrange(128, 256) for _ in range(8)) for _ in range(n)], pa.binary())
    if kind == "bool":
        return pa.array([rng.random() < 0.5 for _ in range(n)], pa.bool_())
    if kind == "struct":
        return pa.array([{"a": sentence(rng)} for _ in range(n)], pa.struct([("a", pa.string())]))
    if kind == "dictionary":
        return pa.array([sentence(rng) for _ in range(n)], pa.string()).dictionary_encode()
    if kind == "large-string-empty":
        return pa.array([rng.choice(["", " ", "\n\t", "\u3000"]) for _ in range(n)], pa.large_string())
    raise AssertionError(kind)


KINDS = ["nulls", "all-null", "int", "float", "list", "binary-utf8", "binary-bad", "bool", "struct",
         "dictionary", "large-string-empty"]


def parquet_nulls_and_types(rng, folder, n):
    rows = rng.randint(1, 5)
    target = rng.choice(["text", "id"])
    kind = rng.choice(KINDS)
    id_name = rng.choice(["passage_id", "id"])
    if target == "text":
        ids = pa.array([f"pt{n}-{k}" for k in range(rows)], pa.string())
        table = pa.table({id_name: ids, "text": column(rng, kind, rows)})
    else:
        table = pa.table({id_name: column(rng, kind, rows), "text": column(rng, "string", rows)})
    path = folder / f"types{n}.parquet"
    path.write_bytes(parquet_bytes(table))
    family = "parquet-nulls" if kind in ("nulls", "all-null") else "parquet-wrong-type"
    return f"{family}-{target}", path


def parquet_missing_columns(rng, folder, n):
    rows = rng.randint(0, 3)
    columns = rng.choice([["passage_id"], ["id", "body"], ["Text"], ["passage_id", "TEXT"], []])
    table = pa.table({c: [f"m{n}-{k}" for k in range(rows)] for c in columns}) if columns else \
        pa.table({"x": pa.array([], pa.string())}).drop(["x"])
    path = folder / f"missing{n}.parquet"
    path.write_bytes(parquet_bytes(table))
    return "parquet-missing-columns", path


def empty_passage(rng, folder, n):
    blank = rng.choice(["", " ", "\n", "\t \r\n", "\u3000", "\u00a0 \u2003"])
    where = rng.randrange(3)
    if where == 0:
        path = folder / f"blank{n}.jsonl"
        lines = [{"id": f"b{n}-0", "text": "Fine."}, {"id": f"b{n}", "text": blank}]
        path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    elif where == 1:
        path = folder / f"blank{n}.parquet"
        path.write_bytes(parquet_bytes(pa.table({"passage_id": [f"b{n}-0", f"b{n}"], "text": ["Fine.", blank]})))
    else:
        path = folder
        (folder / f"blank{n}.txt").write_text(blank, encoding="utf-8")
    return "empty-passage", path


def duplicate_ids(rng, folder, n):
    choice = rng.randrange(4)
    if choice == 0:  # twice in one file, other text
        rows = [(f"d{n}", sentence(rng)), (f"d{n}-x", "Other."), (f"d{n}", sentence(rng) + " Changed.")]
    elif choice == 1:  # a stored id with other text
        good = rng.choice(sorted(GOOD))
        rows = [(f"d{n}", "Fresh."), (good, GOOD[good] + " Altered.")]
    elif choice == 2:  # an integer id that clashes with its own string form
        rows = [(str(n), "As a string."), (n, "As an integer.")]
    else:  # a chunk id of a long passage given as such
        rows = [(f"d{n}", "Long sentence here. " * (MAX_PASSAGE_CHARS // 15)), (f"d{n}#1", "Short.")]
    if rng.random() < 0.5:
        path = folder / f"dup{n}.jsonl"
        path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in rows))
    else:
        path = folder / f"dup{n}.parquet"
        ids = [str(i) for i, _ in rows]
        path.write_bytes(parquet_bytes(pa.table({"passage_id": ids, "text": [t for _, t in rows]})))
    return "duplicate-ids", path


BAD_JSON = [
    '{"id": "a", "text": "unterminated', 'not json at all', '[1, 2, 3]', '42', '"a string"', 'null', 'true',
    '{"id": "a", "text": "b"}{"id": "c"}', "{'id': 'a', 'text': 'single quotes'}", '{"text": }',
    '{"id": "a", "text": "lone \\ud800 surrogate"}', '{"id": "\\udfff", "text": "lone in the id"}',
    '{"id": NaN, "text": "nan id"}', '{"id": Infinity, "text": "inf id"}', '{"id": 1.0, "text": "float id"}',
    '{"id": [1], "text": "list id"}', '{"id": {"a": 1}, "text": "object id"}', '{"id": "", "text": "empty id"}',
    '{"id": null, "text": "null id"}', '{"id": false, "text": "bool id"}', '{"text": null}', '{"text": 3}',
    '{"text": ["a"]}', '{"text": {"a": "b"}}', '{"id": "a"}', '{}', '{"id": "a", "text": "raw \x01 control"}',
    '{"id": 1' + "1" * 5000 + ', "text": "integer too long"}', "[" * 50_000, '{"a":' * 20_000,
    '\ufeff{"id": "a", "text": "byte-order mark inside"}', '{"id": "a", "text": "b"} trailing',
]


def invalid_json(rng, folder, n):
    lines = [json.dumps({"id": f"j{n}-{k}", "text": sentence(rng)}) for k in range(rng.randint(0, 3))]
    bad = rng.choice(BAD_JSON)
    if rng.random() < 0.3:  # or a good line cut short
        good = json.dumps({"id": f"j{n}", "text": sentence(rng, 20)})
        bad = good[: rng.randrange(1, len(good))]
    lines.insert(rng.randint(0, len(lines)), bad)
    path = folder / f"j{n}.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")
    return "invalid-json", path


def huge_passage(rng, folder, n):
    size = rng.choice([MAX_PASSAGE_CHARS + 1, 3 * MAX_PASSAGE_CHARS + 17, 150_000])
    if rng.random() < 0.3:
        text = "y" * size  # no boundary at all: hard cuts
    else:
        text = ""
        while len(text) < size:
            text += sentence(rng, 15) + rng.choice([". ", "! ", "\n\n", " "])
    if rng.random() < 0.5:
        path = folder / f"huge{n}.jsonl"
        path.write_text(json.dumps({"id": f"huge{n}", "text": text}) + "\n")
    else:
        path = folder / f"huge{n}.parquet"
        path.write_bytes(parquet_bytes(pa.table({"passage_id": [f"huge{n}"], "text": [text]})))
    return "huge-passage", path


FAMILIES = [txt_wrong_encoding, jsonl_wrong_encoding, truncated_parquet, parquet_nulls_and_types,
            parquet_nulls_and_types, parquet_missing_columns, empty_passage, duplicate_ids, invalid_json]


def test_a_thousand_malformed_files_end_in_dataset_errors_and_lose_nothing(tmp_path):
    started = time.monotonic()
    rng = random.Random(SEED)
    store = SiteStore(tmp_path / "site", site_id="fuzz")
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in GOOD.items()))
    assert store.ingest([good]).added == len(GOOD)

    outcomes: Counter = Counter()
    per_family: Counter = Counter()
    tracebacks: list[str] = []
    half_written: list[str] = []
    generators = [rng.choice(FAMILIES) for _ in range(ROUNDS)] + [huge_passage] * 6
    for n, generate in enumerate(generators):
        folder = tmp_path / "in" / str(n)
        folder.mkdir(parents=True)
        family, path = generate(rng, folder, n)
        before = (tmp_path / "site" / "passages.parquet").read_bytes()
        try:
            store.ingest([path])
        except DatasetError as exc:
            outcome = "refused"
            assert "\n" not in str(exc) and str(exc).startswith(str(path)), (family, str(exc))
            if (tmp_path / "site" / "passages.parquet").read_bytes() != before:
                half_written.append(f"{family} {path}")
        except Exception as exc:  # noqa: BLE001 - anything else would end the CLI in a traceback
            outcome = "traceback"
            tracebacks.append(f"{family} {path}: {type(exc).__name__}: {exc}"[:300])
        else:
            outcome = "accepted"
        outcomes[outcome] += 1
        per_family[family, outcome] += 1

    now = {p.passage_id: p.text for p in store.passages()}
    lost = [pid for pid in GOOD if pid not in now]
    altered = [pid for pid in GOOD if pid in now and now[pid] != GOOD[pid]]
    summary = {"inputs tried": len(generators), "tracebacks": len(tracebacks), "passages lost": len(lost),
               "passages altered": len(altered), "refused": outcomes["refused"], "accepted": outcomes["accepted"],
               "refused but store changed": len(half_written), "stored passages now": len(now),
               "seconds": round(time.monotonic() - started, 1)}
    print("\ningest fuzz summary:", json.dumps(summary))
    for (family, outcome), count in sorted(per_family.items()):
        print(f"  {family:32s} {outcome:9s} {count}")
    for line in tracebacks[:20]:
        print("  TRACEBACK", line)

    assert summary["inputs tried"] >= 1_000
    assert summary["tracebacks"] == 0, tracebacks[:10]
    assert summary["passages lost"] == 0 and summary["passages altered"] == 0, (lost, altered)
    assert summary["refused but store changed"] == 0, half_written[:10]
    assert summary["refused"] + summary["accepted"] == summary["inputs tried"]
    assert summary["refused"] > summary["accepted"] > 0
    assert per_family["huge-passage", "accepted"] == 6
    assert all(0 < len(text) <= MAX_PASSAGE_CHARS and text.strip() for text in now.values())
    assert "None" not in now and "nan" not in now
