"""Run federated rounds on one machine: Flower's simulation runtime with its Ray backend.

Every site is a simulated SuperNode whose ClientApp runs in a Ray actor and trains from its own
store under ``<work_dir>/sites/site-<i>``; the coordinator's ServerApp runs the rounds and writes
pool versions to ``<work_dir>/registry``. ``prepare_sites`` lays out those stores from a dataset
(the benchmark's site split), as each data owner's own ingestion would.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from flwr.simulation import run_simulation

from fedprag.client.app import make_client_app
from fedprag.client.store import SiteStore
from fedprag.coordinator.app import RoundReport, make_server_app, recorded_rounds
from fedprag.coordinator.registry import registry_dir
from fedprag.shared.config import FedpragConfig
from fedprag.shared.data.schema import Dataset
from fedprag.shared.processes import FLOWER_QUIET


def flower_environment(home: str | Path | None = None) -> None:
    """Set :data:`FLOWER_QUIET` and a private Flower home in this process (unless already set)."""
    for key, value in FLOWER_QUIET.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("FLWR_HOME", str(home or tempfile.mkdtemp(prefix="flwr-home-")))


def prepare_sites(dataset: Dataset, sites_root: str | Path) -> list[SiteStore]:
    """One store per site that holds passages, numbered 0..N-1 in site order (idempotent)."""
    stores = []
    for site in sorted({p.site for p in dataset.passages}):
        passages = [p for p in dataset.passages if p.site == site]
        store = SiteStore(Path(sites_root) / f"site-{len(stores)}", site_id=f"site-{len(stores)}")
        store.add_passages([(p.passage_id, p.text) for p in passages],
                           {p.passage_id: dataset.augmentations[p.passage_id] for p in passages
                            if p.passage_id in dataset.augmentations})
        stores.append(store)
    return stores


def simulate(config: FedpragConfig, sites: int, ray_cpus: int = 2) -> list[RoundReport]:
    """Run the federation's remaining rounds of ``config.federation.mode`` over ``sites`` simulated
    sites (stores under ``<work_dir>/sites``), each writing its passages' encoding data as
    ``config.augment`` says; returns every recorded round.

    The sites run as actors of the Ray cluster at ``federation.ray_address``, or of a Ray started
    for the run with ``ray_cpus`` CPUs."""
    work = Path(config.federation.work_dir).resolve()  # the actors may not share this process's directory
    flower_environment(work / "flwr-home")
    server = make_server_app(config)
    client = make_client_app(config.model.path, str(work / "sites"), augment=config.augment)
    address = config.federation.ray_address
    run_simulation(
        server_app=server, client_app=client, num_supernodes=sites,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                        "init_args": {"address": address} if address else
                        {"num_cpus": ray_cpus, "include_dashboard": False}},
    )
    return recorded_rounds(registry_dir(config.federation))
