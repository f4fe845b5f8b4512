"""The site store: ingestion from three formats, idempotent, conflict-checked and crash-safe."""

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fedprag.client import store as store_module
from fedprag.client.store import SiteStore
from fedprag.shared.data.schema import DatasetError


@pytest.fixture()
def sources(tmp_path):
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in [{"id": "j1", "text": "Kara was born in 1873."},
                                                        {"text": "Lo plays the harp."}]) + "\n")
    parquet = tmp_path / "b.parquet"
    pq.write_table(pa.table({"passage_id": ["q1"], "text": ["Mi grew up in Quessa."]}), parquet)
    folder = tmp_path / "txt"
    folder.mkdir()
    (folder / "t1.txt").write_text("Ze works as a baker.")
    return [jsonl, parquet, folder]


def test_ingests_jsonl_parquet_and_text_folders_idempotently(tmp_path, sources):
    store = SiteStore(tmp_path / "site", site_id="site-a")
    first = store.ingest(sources)
    assert (first.added, first.unchanged) == (4, 0)
    assert {p.passage_id for p in store.passages()} >= {"j1", "q1", "t1"}
    again = store.ingest(sources)
    assert (again.added, again.unchanged) == (0, 4)
    assert len(store.passages()) == 4
    assert SiteStore(tmp_path / "site").state.site_id == "site-a"  # state survives reopening


def test_an_id_with_different_text_is_refused_and_nothing_changes(tmp_path, sources):
    store = SiteStore(tmp_path / "site")
    store.ingest(sources)
    clash = tmp_path / "clash.jsonl"
    clash.write_text(json.dumps({"id": "j1", "text": "Something else entirely."}) + "\n")
    with pytest.raises(DatasetError, match="already stored with different text"):
        store.ingest([clash])
    assert next(p for p in store.passages() if p.passage_id == "j1").text == "Kara was born in 1873."


def test_bad_sources_name_the_problem(tmp_path):
    store = SiteStore(tmp_path / "site")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x"}\n')
    with pytest.raises(DatasetError, match="bad.jsonl:1: needs a string field 'text'"):
        store.ingest([bad])
    with pytest.raises(DatasetError, match="takes .jsonl, .parquet, .txt or a folder"):
        store.ingest([tmp_path / "x.csv"])
    note = tmp_path / "note-7.txt"
    note.write_text("Kara Lovel came into the world in 1873.")
    assert store.ingest([note]).added == 1 and store.passages()[-1].passage_id == "note-7"  # one .txt file


def test_a_crash_mid_ingest_keeps_the_previous_store_whole(tmp_path, sources, monkeypatch):
    store = SiteStore(tmp_path / "site")
    store.ingest(sources[:1])
    before = (tmp_path / "site" / "passages.parquet").read_bytes()

    def crash(table, where, *args, **kwargs):
        with open(where, "wb") as half:
            half.write(b"PAR1 partial")
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(store_module.pq, "write_table", crash)
    with pytest.raises(KeyboardInterrupt):
        store.ingest(sources[1:])
    monkeypatch.undo()
    assert (tmp_path / "site" / "passages.parquet").read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "site").iterdir()) == [".lock", "passages.parquet", "state.json"]
    assert store.ingest(sources).added == 2  # and ingestion picks up where it stopped


def test_stored_routing_rows_are_kept_and_rows_for_another_pool_shape_are_refused(tmp_path, sources):
    import torch

    from fedprag.shared.lora.store import EncodingMismatch
    from fedprag.shared.methods.poly.layers import ExpertPool, RoutingTable

    def pool(experts):
        factors = {"layers.0.mlp.down_proj": (torch.zeros(experts, 1, 4), torch.zeros(experts, 4, 1))}
        return ExpertPool(factors, scale=1.0)

    store = SiteStore(tmp_path / "site")
    store.ingest(sources)
    ids = [p.passage_id for p in store.passages()]
    trained = RoutingTable(ids[:2], torch.full((2, 1, 6), 5.0))
    store.save_routing(trained, pool(6), pool_version=3, base_digest="d" * 64)
    logits = store.routing(pool(6), "d" * 64)
    assert logits.shape == (4, 1, 6)
    torch.testing.assert_close(logits[:2], trained.logits)  # kept
    assert logits[2:].abs().max() < 0.1  # new passages start near zero
    with pytest.raises(EncodingMismatch, match="the pool needs \\[1, 8\\]"):
        store.routing(pool(8), "d" * 64)
    with pytest.raises(EncodingMismatch, match="made for base model"):
        store.routing(pool(6), "e" * 64)


def test_opening_a_store_undoes_what_a_killed_write_left(tmp_path, sources):
    store = SiteStore(tmp_path / "site")
    store.ingest(sources[:1])
    routing = tmp_path / "site" / "routing"
    routing.mkdir()
    (routing / "manifest.json").write_text("{}")
    os.replace(routing, tmp_path / "site" / ".routing.old-123")  # killed between atomic_dir's two renames
    (tmp_path / "site" / ".passages.parquet.abc.tmp").write_bytes(b"PAR1 partial")
    SiteStore(tmp_path / "site")
    assert (routing / "manifest.json").read_text() == "{}"
    assert sorted(p.name for p in (tmp_path / "site").iterdir()) == [".lock", "passages.parquet", "routing", "state.json"]


def test_rows_that_do_not_fit_a_released_pool_are_refused_until_cleared_then_all_are_pending(tmp_path, sources):
    import torch

    from fedprag.shared.lora.store import EncodingMismatch
    from fedprag.shared.methods.poly.layers import ExpertPool, RoutingTable

    def pool(experts):
        return ExpertPool({"layers.0.mlp.down_proj": (torch.zeros(experts, 1, 6), torch.zeros(experts, 5, 1))}, 1.0)

    store = SiteStore(tmp_path / "site")
    store.ingest(sources)
    ids = [p.passage_id for p in store.passages()]
    store.save_routing(RoutingTable(ids, torch.zeros(len(ids), 1, 4)), pool(4), 1, "d" * 64)
    assert store.pending(pool(4), "d" * 64) == []
    with pytest.raises(EncodingMismatch, match="re-encode them against this pool"):
        store.encoded(pool(8), "d" * 64)
    store.clear_routing()
    assert [p.passage_id for p in store.pending(pool(8), "d" * 64)] == ids
    assert sorted(p.name for p in (tmp_path / "site").glob(".*")) == [".lock"]  # nothing set aside is left


def test_a_sites_router_questions_are_embedded_once_across_rounds():
    from fedprag.client.train import RememberedEmbed

    calls = []

    def embed(texts):
        calls.append(list(texts))
        return np.array([[float(len(t))] for t in texts], dtype=np.float32)

    remembered = RememberedEmbed(embed)
    assert remembered(["a", "bb", "a"]).tolist() == [[1.0], [2.0], [1.0]]
    assert remembered(["bb", "ccc"]).tolist() == [[2.0], [3.0]]
    assert calls == [["a", "bb"], ["ccc"]]
