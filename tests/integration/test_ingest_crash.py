"""A site's ingest killed with SIGKILL at any moment leaves the store whole: every passage accepted
before the kill is there, intact, and ingesting again completes the rest."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from fedprag.client.store import SiteStore

pytestmark = pytest.mark.integration


def _ingest(site, source) -> subprocess.Popen:
    env = {**os.environ, "TQDM_DISABLE": "1"}
    return subprocess.Popen([sys.executable, "-m", "fedprag.cli", "--quiet", "client", "ingest", str(site),
                             str(source)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)


def test_sigkill_mid_ingest_loses_nothing_and_a_rerun_completes(tmp_path):
    site = tmp_path / "site"
    first = tmp_path / "first.jsonl"
    first.write_text("".join(json.dumps({"id": f"a{i}", "text": f"Passage a{i} says {i}."}) + "\n" for i in range(50)))
    assert subprocess.run([sys.executable, "-m", "fedprag.cli", "--quiet", "client", "ingest", str(site),
                           str(first)], capture_output=True, check=False).returncode == 0
    accepted = {p.passage_id: p.text for p in SiteStore(site).passages()}
    big = tmp_path / "big.jsonl"
    big.write_text("".join(json.dumps({"id": f"b{i}", "text": f"Passage b{i} holds fact number {i}. " * 20}) + "\n"
                           for i in range(30_000)))
    rng, outcomes = random.Random(0), []
    for _ in range(6):
        process = _ingest(site, big)
        time.sleep(rng.uniform(0.5, 4.0))
        process.send_signal(signal.SIGKILL)
        process.wait()
        stored = {p.passage_id: p.text for p in SiteStore(site).passages()}  # readable: never half-written
        assert {k: stored[k] for k in accepted} == accepted  # nothing accepted before is lost or altered
        assert len(stored) in (len(accepted), len(accepted) + 30_000)  # all of the kill's file, or none
        outcomes.append(len(stored) > len(accepted))
        if outcomes[-1]:
            break
    assert subprocess.run([sys.executable, "-m", "fedprag.cli", "--quiet", "client", "ingest", str(site),
                           str(big)], capture_output=True, check=False).returncode == 0
    final = {p.passage_id: p.text for p in SiteStore(site).passages()}
    assert len(final) == 30_050 and {k: final[k] for k in accepted} == accepted
