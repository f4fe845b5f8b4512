"""A real Flower deployment on loopback: a SuperLink and site daemons (each with its SuperNode) as
processes, TLS, node auth.

The module-level federation runs ``fedprag federate`` (deployment runtime) over sites whose
passages carry canary strings plus a site that fails its round. The test kills the SuperLink
(the coordinator) with SIGKILL once round 1 is published, then runs the command again, which
must resume with round 2.
"""

import json
import socket
import ssl
import subprocess
import time
from contextlib import nullcontext

import psutil
import pytest

from fedprag.client.store import SiteStore
from fedprag.cluster.deployment import DeploymentError, LocalDeployment
from fedprag.coordinator.app import recorded_rounds
from tests import phases
from tests.integration.federation_support import (
    CANARIES,
    assert_no_canary_in,
    canary_sites,
    egress_logs,
    events,
    federate,
    federate_command,
)

pytestmark = pytest.mark.integration

SPEC = "tiny:small"
"""The built-in model's small recipe (shipped)."""


def _kill_coordinator_after_round_one(work, spec):
    """Start a 2-round federation, SIGKILL its SuperLink once round 1 is published; returns the run."""
    launcher = subprocess.Popen(federate_command(work, spec, 2, "deployment"), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (work / "registry" / "v000001").is_dir():
        if launcher.poll() is not None or time.monotonic() > deadline:
            launcher.kill()
            stdout, stderr = launcher.communicate()
            pytest.fail(f"round 1 never completed (exit code {launcher.returncode}):\n{stdout[-3000:]}\n{stderr[-3000:]}")
        time.sleep(0.2)
    # the coordinator's machine dies: the SuperLink and everything it started (SuperExec, ServerApp)
    coordinator = psutil.Process(json.loads((work / "logs" / "pids.json").read_text())["superlink"])
    for process in [coordinator, *coordinator.children(recursive=True)]:
        process.kill()
    stdout, stderr = launcher.communicate(timeout=300)
    return subprocess.CompletedProcess(launcher.args, launcher.returncode, stdout, stderr)


def _deployed(work):
    """Canary sites, a 2-round federation whose coordinator is killed after round 1, and the command
    run again; (work, stores, killed run, resumed run)."""
    stores = canary_sites(work)
    killed = _kill_coordinator_after_round_one(work, SPEC)
    resumed = federate(work, SPEC, 2, "deployment")
    return nullcontext((work, stores, killed, resumed))


phases.register("deployed", _deployed, early=True)


@pytest.fixture(scope="module")
def deployed(shared_resources):
    """The module's federation, started in the background as the session starts (tests/phases.py)."""
    return phases.shared("deployed").value(shared_resources)


def test_round_one_completes_without_the_failing_site(deployed):
    work, stores, _, _ = deployed
    first = recorded_rounds(work / "registry")[0]
    assert first.round == 1 and sorted(first.accepted) == sorted(s.state.site_id for s in stores)
    [reason] = first.rejected.values()
    assert "SiteFailure" in reason and "RuntimeError" in reason and "no passages" not in reason, reason


def test_a_killed_coordinator_resumes_without_losing_completed_rounds(deployed):
    work, stores, killed, resumed = deployed
    assert killed.returncode != 0 and "stopped after round 1 of 2" in killed.stderr
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [e["completed_round"] for e in events(resumed.stderr, "coordinator.resume")] == [1]
    assert [e["round"] for e in events(resumed.stderr, "coordinator.round.done")] == [2]
    assert sorted(p.name for p in (work / "registry").iterdir() if p.is_dir()) == ["v000000", "v000001", "v000002"]
    state = SiteStore(stores[0].root).state
    assert state.rounds_joined[0] == 1 and state.rounds_joined[-1] == 2 and state.pool_version == 1


def test_every_process_is_stopped(deployed):
    work, _, _, _ = deployed
    pids = json.loads((work / "logs" / "pids.json").read_text())
    descendants = pids.pop("descendants")
    assert descendants  # SuperExec and the apps were seen, so they were stopped too
    for pid in [*pids.values(), *descendants]:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, pid


def test_no_canary_byte_leaves_any_site(deployed):
    work, stores, killed, resumed = deployed
    coordinator_side = [work / "logs" / "superlink.log", work / "fedprag.toml", *(work / "registry").rglob("*")]
    assert_no_canary_in([*egress_logs(stores), *coordinator_side],
                        [killed.stdout, killed.stderr, resumed.stdout, resumed.stderr])
    assert any(CANARIES[0] in p.text for store in stores for p in store.passages())


@pytest.fixture
def superlink(tmp_path):
    """A SuperLink alone (TLS, SuperNode authentication), stopped after the test."""
    deployment = LocalDeployment(tmp_path, sites=[], model_spec=SPEC, startup_timeout=60)
    with deployment:
        yield deployment


def test_a_site_whose_key_is_not_registered_is_refused(superlink, tmp_path):
    with pytest.raises(DeploymentError, match="refused"):
        superlink.start_daemon("rogue", tmp_path / "rogue", superlink.node_keys("rogue"))
    keys = superlink.node_keys("member")
    superlink.register(keys)
    assert superlink.start_daemon("member", tmp_path / "member", keys).process.poll() is None


def test_the_superlink_speaks_tls_with_the_local_ca_only(superlink):
    trusted = ssl.create_default_context(cafile=str(superlink.tls.ca_cert))
    with (socket.create_connection(("127.0.0.1", superlink.superlink.port)) as raw,
          trusted.wrap_socket(raw, server_hostname="127.0.0.1") as tls):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
    with (socket.create_connection(("127.0.0.1", superlink.superlink.port)) as raw,
          pytest.raises(ssl.SSLCertVerificationError)):
        ssl.create_default_context().wrap_socket(raw, server_hostname="127.0.0.1")
