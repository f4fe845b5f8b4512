"""Federated rounds on Flower's Ray simulation runtime: privacy, dropout, restart, what sites keep.

One module-level federation (run through the ``fedprag federate`` command, as an operator would,
its sites as actors on the session's Ray) serves every test: sites whose passages carry planted
canary strings, plus a site that fails during the round. Round 1 runs, the process exits, and a
second invocation must resume with round 2. The deployed runtime (SuperLink and SuperNodes) has its own tests in test_deployment.py.
"""

import json
import subprocess
import sys

import pytest

from fedprag.client.store import SiteStore
from tests.integration.federation_support import (
    CANARIES,
    assert_no_canary_in,
    canary_sites,
    egress_logs,
    events,
    federate,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def federation(small_model_spec, ray_session, tmp_path_factory):
    work = tmp_path_factory.mktemp("federation")
    stores = canary_sites(work)
    first = federate(work, small_model_spec, 1, "simulation", "--ray-address", ray_session)
    second = federate(work, small_model_spec, 2, "simulation", "--ray-address", ray_session)
    return work, stores, first, second


def test_rounds_complete_without_the_failing_site(federation):
    _, stores, first, _ = federation
    assert first.returncode == 0, first.stderr[-3000:]
    done = events(first.stderr, "coordinator.round.done")
    assert [(e["round"], e["sites"]) for e in done] == [(1, len(stores))]
    rejected = events(first.stderr, "coordinator.update.rejected")
    assert len(rejected) == 1 and "RuntimeError" in rejected[0]["reason"]
    assert "no passages" not in first.stderr  # only the kind of failure crosses, never its message


def test_a_restarted_coordinator_resumes_after_the_last_completed_round(federation):
    work, stores, _, second = federation
    assert second.returncode == 0, second.stderr[-3000:]
    assert [e["completed_round"] for e in events(second.stderr, "coordinator.resume")] == [1]
    assert [e["round"] for e in events(second.stderr, "coordinator.round.done")] == [2]
    assert sorted(p.name for p in (work / "registry").iterdir() if p.is_dir()) == ["v000000", "v000001", "v000002"]
    state = SiteStore(stores[0].root).state
    assert state.rounds_joined == [1, 2] and state.pool_version == 1


def test_no_canary_byte_leaves_any_site(federation):
    work, stores, first, second = federation
    assert_no_canary_in([*egress_logs(stores), *(work / "registry").rglob("*")],
                        [first.stdout, first.stderr, second.stdout, second.stderr])
    # the canaries really are in the sites' own stores, so the test could have caught a leak
    assert any(CANARIES[0] in p.text for store in stores for p in store.passages())


def test_client_status_reports_the_site(federation):
    _, stores, _, _ = federation
    result = subprocess.run([sys.executable, "-m", "fedprag.cli", "client", "status", str(stores[0].root)],
                            capture_output=True, text=True, timeout=120, check=False)
    status = json.loads(result.stdout)
    assert status["passages"] == len(stores[0].passages()) and status["rounds_joined"] == [1, 2]
