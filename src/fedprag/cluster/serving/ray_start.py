"""Starting or joining Ray, for the query API, the coordinator's actor and the tests' session.

A module of its own, importing only Ray: ``fedprag coordinator run``, a Ray driver that holds the
coordinator's actor, then imports no torch (the replicas' modules beside it do).
"""

from __future__ import annotations

import ray

from fedprag.shared.log import get_logger

log = get_logger(__name__)


def init_ray(address: str | None, num_cpus: int | None) -> None:
    """Start (or join) Ray, tried up to three times: on a busy machine a new Ray's own GCS server or raylet can
    miss its start-up deadline ("Timed out waiting for file .../gcs_server_port_...", "The current
    node timed out during startup")."""
    for attempt in (1, 2, 3):
        try:
            ray.init(address=address, num_cpus=None if address else num_cpus, include_dashboard=False,
                     log_to_driver=False)
            return
        except Exception as exc:  # Ray raises a bare Exception for a raylet's start-up timeout
            if attempt == 3 or "timed out" not in str(exc).lower():
                raise
            log.warning("serve.ray_start.retry", reason=str(exc)[:200])
            ray.shutdown()
