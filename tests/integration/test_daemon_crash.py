"""A site daemon killed with SIGKILL while it ingests or encodes an inbox file restarts with nothing
lost: every passage it accepted before the kill is there, intact, the store loads whole, and the
restarted daemon takes the rest of the file and encodes every passage.

The first kill lands while the daemon writes the passages file (its temporary file is on disk);
the next ones at random moments of the restarted daemon's work, mostly while it encodes."""

import json
import os
import random
import signal
import time

import pytest

from fedprag.client.admin import daemon_status
from fedprag.client.store import SiteStore
from fedprag.cluster.deployment import LocalDeployment
from fedprag.shared.lora.layers import attach_lora
from fedprag.shared.methods.poly.config import PolyConfig
from fedprag.shared.methods.poly.layers import ExpertPool, placed
from fedprag.shared.models.loading import load_causal_lm

pytestmark = pytest.mark.integration

ARRIVING = 100
"""Passages in the inbox file: long ones, so that writing the passages file takes a while (and so
does indexing them: a restarted daemon embeds every new passage before it serves it; the encoder
reads a passage's first 256 tokens, so fewer, longer passages make the same write for less
embedding)."""


def _site_with_released_pool(site, spec):
    """A store with 20 passages and a released (untrained) default pool, as after a federation."""
    base = load_causal_lm(spec)
    config = PolyConfig()
    pool = ExpertPool.initialised(placed(attach_lora(base.model), config.layers, config.targets), config.n_experts,
                                  config.rank, config.scale, config.routing, config.seed)
    store = SiteStore(site, site_id="site-crash")
    store.add_passages([(f"a{i}", f"Person a{i} was born in {1800 + i}. They live in Town{i}.") for i in range(20)])
    store.save_pool(pool, config, 1, base.digest)
    return base, pool


def _writing(site):
    """Whether the daemon is writing one of the store's files (an atomic write's temporary file or
    folder is there): the passages file, then the routing rows, the index, the state."""
    return any(site.glob(".*.tmp")) or any((site / "routing").glob(".*.tmp"))


def test_sigkill_mid_inbox_loses_nothing_and_a_restart_completes(small_model_spec, tmp_path):
    site = tmp_path / "site"
    base, pool = _site_with_released_pool(site, small_model_spec)
    staged = tmp_path / "big.jsonl"
    filler = " ".join(f"Clause {j} of the town record." for j in range(150))  # makes the write take a while
    staged.write_text("".join(json.dumps({"id": f"b{i}", "text": f"Person b{i} was born in {1700 + i % 300}. {filler}",
                                          "qa": [[f"When was Person b{i} born?", str(1700 + i % 300)]]}) + "\n"
                              for i in range(ARRIVING)))
    rng, kills = random.Random(0), 0
    with LocalDeployment(tmp_path / "work", [("site", site)], small_model_spec, rounds=False) as deployment:
        accepted = {p.passage_id: p.text for p in SiteStore(site).passages()}
        os.link(staged, site / "inbox" / "big.jsonl")  # lands whole, as a move would
        for attempt in range(3):
            if attempt == 0:
                deadline = time.monotonic() + 60
                while not _writing(site):  # mid-write
                    assert time.monotonic() < deadline
                    time.sleep(0.001)
            else:
                time.sleep(rng.uniform(1.0, 4.0))
            os.killpg(deployment.daemons["site"].process.pid, signal.SIGKILL)
            deployment.daemons["site"].process.wait()
            kills += 1
            after = SiteStore(site)  # the store opens whole (what a killed write left is undone)
            now = {p.passage_id: p.text for p in after.passages()}
            assert all(now.get(pid) == text for pid, text in accepted.items())  # nothing lost or altered
            assert set(after.encoded(pool, base.digest).passage_ids) <= set(now)  # the routing rows load, for stored passages
            accepted = now
            deployment.start_daemon("site", site, deployment.node_keys("site"))
        deadline = time.monotonic() + 600
        done = site / "inbox" / "done" / "big.jsonl"
        while (status := daemon_status(site)).pending or status.passages < 20 + ARRIVING or not done.is_file():
            assert time.monotonic() < deadline, status
            time.sleep(1.0)
    final = SiteStore(site)
    assert len(final.passages()) == 20 + ARRIVING == len(final.encoded(pool, base.digest).passage_ids)
    assert not (site / "inbox" / "big.jsonl").exists()
    assert not list(site.glob(".*.tmp")) and kills == 3
