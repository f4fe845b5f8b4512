"""Federated rounds on Flower's Ray simulation: privacy, dropout, restart, and what sites keep.

One module-level federation (run through the ``fedprag federate`` command, as an operator would)
serves every test: three sites whose passages carry planted canary strings, plus a fourth site
that fails during the round. Round 1 runs, the process exits, and a second invocation must
resume with round 2.
"""

import json
import os
import subprocess
import sys

import pytest

from client.store import SiteStore
from cluster.simulation import prepare_sites
from shared.data.benchmark import BenchmarkSpec, make_benchmark
from shared.data.schema import Dataset, Passage

pytestmark = pytest.mark.integration
CANARIES = ["QZXCANARY7781", "Vorbluq Tessamine"]


def _federate(work, spec, rounds):
    env = {**os.environ, "FEDPRAG__FEDERATION__WORK_DIR": str(work)}
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", "--quiet", "federate", "--model", spec, "--rounds", str(rounds),
         "--min-sites", "2", "--local-epochs", "1"],
        capture_output=True, text=True, timeout=600, env=env, check=False,
    )


@pytest.fixture(scope="module")
def federation(small_model_spec, tmp_path_factory):
    work = tmp_path_factory.mktemp("federation")
    dataset = make_benchmark(BenchmarkSpec(people=9, sites=3, alpha=100.0, seed=2))
    planted = [Passage(p.passage_id, p.site, f"{p.text} Its archive code is {CANARIES[i % 2]}.")
               for i, p in enumerate(dataset.passages)]
    stores = prepare_sites(Dataset(planted, dataset.questions, dataset.augmentations), work / "sites")
    SiteStore(work / "sites" / f"site-{len(stores)}", site_id="site-broken")  # no passages: fails its round
    first = _federate(work, small_model_spec, rounds=1)
    second = _federate(work, small_model_spec, rounds=2)
    return work, stores, first, second


def _events(result, name):
    return [json.loads(line) for line in result.stderr.splitlines()
            if line.startswith("{") and f'"{name}"' in line]


def test_rounds_complete_without_the_failing_site(federation):
    _, stores, first, _ = federation
    assert first.returncode == 0, first.stderr[-3000:]
    done = _events(first, "coordinator.round.done")
    assert [(e["round"], e["sites"]) for e in done] == [(1, len(stores))]
    rejected = _events(first, "coordinator.update.rejected")
    assert len(rejected) == 1 and "RuntimeError" in rejected[0]["reason"]
    assert "no passages" not in first.stderr  # only the kind of failure crosses, never its message


def test_a_restarted_coordinator_resumes_after_the_last_completed_round(federation):
    work, stores, _, second = federation
    assert second.returncode == 0, second.stderr[-3000:]
    assert [e["completed_round"] for e in _events(second, "coordinator.resume")] == [1]
    assert [e["round"] for e in _events(second, "coordinator.round.done")] == [2]
    assert sorted(p.name for p in (work / "registry").iterdir()) == ["v000000", "v000001", "v000002"]
    state = SiteStore(stores[0].root).state
    assert state.rounds_joined == [1, 2] and state.pool_version == 1


def test_no_canary_byte_leaves_any_site(federation):
    work, stores, first, second = federation
    egress = [store.root / "egress" / f"{store.state.site_id}.bin" for store in stores]
    assert all(path.is_file() and path.stat().st_size > 0 for path in egress)
    for canary in CANARIES:
        for word in canary.split():
            assert all(word.encode() not in path.read_bytes() for path in egress), word
            assert word not in first.stdout + first.stderr + second.stdout + second.stderr, word
            for blob in (work / "registry").rglob("*"):
                assert blob.is_dir() or word.encode() not in blob.read_bytes()
    # the canaries really are in the sites' own stores, so the test could have caught a leak
    assert any(CANARIES[0] in p.text for store in stores for p in store.passages())


def test_client_status_reports_the_site(federation):
    _, stores, _, _ = federation
    result = subprocess.run([sys.executable, "-m", "shared.cli", "client", "status", str(stores[0].root)],
                            capture_output=True, text=True, timeout=120, check=False)
    status = json.loads(result.stdout)
    assert status["passages"] == len(stores[0].passages()) and status["rounds_joined"] == [1, 2]
