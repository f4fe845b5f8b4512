"""What crosses between the sites and the coordinator, read on the wire.

A TLS-terminating recording proxy sits between every site's SuperNode and the SuperLink (the
SuperNodes dial the proxy, which presents the SuperLink's own certificate). A round and the pool
release run through it over sites whose passages carry canary strings; no byte of any canary word
crosses, while the pool does. The routing path has its own wire test, with a leaking site it
catches, in test_site_daemon.py.
"""

import pytest

from fedprag.cluster.deployment import LocalDeployment
from fedprag.shared.config import load_config
from tests.integration.federation_support import CANARIES, canary_sites
from tests.integration.wire_recorder import RecordingProxy

pytestmark = pytest.mark.integration


class _RecordedDeployment(LocalDeployment):
    """A deployment whose SuperNodes reach the SuperLink through a recording proxy."""

    proxy: RecordingProxy | None = None

    def superlink_address(self) -> str:
        if self.proxy is None:
            self.proxy = RecordingProxy(self.port, self.tls.server_cert, self.tls.server_key, self.tls.ca_cert)
            self.proxy.__enter__()
        return f"127.0.0.1:{self.proxy.port}"

    def stop(self) -> None:
        super().stop()
        if self.proxy is not None:
            self.proxy.__exit__(None, None, None)


def test_no_canary_byte_crosses_between_the_sites_and_the_coordinator(small_model_spec, tmp_path):
    stores = canary_sites(tmp_path)
    config = load_config(None, {"federation.rounds": 1, "federation.local_epochs": 1, "federation.min_sites": 2})
    sites = [(s.root.name, s.root) for s in stores]
    with _RecordedDeployment(tmp_path, sites, small_model_spec) as deployment:
        rounds = deployment.run(config)
    wire = deployment.proxy.plaintext()
    assert rounds[-1].version == 1 and len(rounds[-1].accepted) == len(stores)
    assert len(wire) > 2 * max(rounds[-1].bytes_per_site.values())  # the pool went out and the updates came back
    for canary in CANARIES:
        for word in canary.split():
            assert word.encode() not in wire, word
    assert any(CANARIES[0] in p.text for store in stores for p in store.passages())  # the canaries are at the sites
