"""What the federation tests share: the session's federation of each mode, sites with planted
canaries, the CLI call, and log parsing."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from fedprag.client.store import SiteStore
from fedprag.cluster.deployment import LocalDeployment
from fedprag.cluster.simulation import prepare_sites
from fedprag.coordinator.app import RoundReport
from fedprag.shared.config import FedpragConfig, load_config
from fedprag.shared.data.benchmark import BenchmarkSpec, make_benchmark
from fedprag.shared.data.schema import Dataset, Passage
from tests.integration.wire_recorder import RecordingProxy

CANARIES = ["QZXCANARY7781", "Vorbluq Tessamine"]
LAST_LAYER = Path(__file__).resolve().parents[2] / "benchmarks" / "poly_last_layer.toml"
"""The last-layer pool's configuration (new passages encode routing-only), by absolute path."""


def canary_sites(work):
    """Site stores whose passages carry planted canary strings, plus one site with no passages
    (its round fails); returns the stores that hold passages."""
    dataset = make_benchmark(BenchmarkSpec(people=8, sites=2, alpha=100.0, seed=2))
    planted = [Passage(p.passage_id, p.site, f"{p.text} Its archive code is {CANARIES[i % 2]}.")
               for i, p in enumerate(dataset.passages)]
    stores = prepare_sites(Dataset(planted, dataset.questions, dataset.augmentations), work / "sites")
    SiteStore(work / "sites" / f"site-{len(stores)}", site_id="site-broken")
    return stores


def with_unique_canaries(dataset):
    """The dataset with a canary of its own planted in every passage; returns it and the canaries."""
    canaries = [f"CANARY{secrets.token_hex(6).upper()}" for _ in dataset.passages]
    planted = [Passage(p.passage_id, p.site, f"{p.text} Its archive code is {c}.")
               for p, c in zip(dataset.passages, canaries)]
    return Dataset(planted, dataset.questions, dataset.augmentations), canaries


def federate_command(work, spec, rounds, runtime, *options):
    """The ``fedprag federate`` command line an operator would type."""
    return [sys.executable, "-m", "fedprag.cli", "--quiet", "federate", "--model", spec, "--rounds", str(rounds),
            "--min-sites", "2", "--local-epochs", "1", "--runtime", runtime, "--work-dir", str(work), *options]


def federate(work, spec, rounds, runtime, *options):
    return subprocess.run(federate_command(work, spec, rounds, runtime, *options), capture_output=True, text=True,
                          timeout=600, check=False)


def events(text, name):
    """The structured log events called ``name`` in a process's output."""
    return [json.loads(line) for line in text.splitlines() if line.startswith("{") and f'"{name}"' in line]


def assert_no_canary_in(blobs, texts):
    """No byte of any canary word appears in these files or texts."""
    for canary in CANARIES:
        for word in canary.split():
            for blob in blobs:
                assert blob.is_dir() or word.encode() not in blob.read_bytes(), (word, blob)
            for text in texts:
                assert word not in text, word


def egress_logs(stores):
    """Each site's audit log of the exact bytes it sent; all must exist and be non-empty."""
    paths = [store.root / "egress" / f"{store.state.site_id}.bin" for store in stores]
    assert all(path.is_file() and path.stat().st_size > 0 for path in paths)
    return paths


class RecordedDeployment(LocalDeployment):
    """A deployment whose SuperNodes reach the SuperLink through a recording proxy, so a test can
    read every byte a round and a release put on that connection."""

    proxy: RecordingProxy | None = None

    def superlink_address(self) -> str:
        if self.proxy is None:
            self.proxy = RecordingProxy(self.superlink.port, self.tls.server_cert, self.tls.server_key, self.tls.ca_cert)
            self.proxy.__enter__()
        return f"127.0.0.1:{self.proxy.port}"

    def stop(self) -> None:
        super().stop()
        if self.proxy is not None:
            self.proxy.__exit__(None, None, None)
            self.proxy = None


@dataclass
class Federation:
    """A coordinator and 3 site daemons that ran 2 rounds, the SuperLink restarted between them,
    left running for the tests that share them.

    Every passage carries a canary of its own. One person of the benchmark (``new``) is held out
    of every site, for the tests that drop their passage into a site's inbox. A test that stops a
    daemon starts it again (``deployment.revive()``) before it returns.
    """

    work: Path
    deployment: RecordedDeployment
    stores: list[SiteStore]
    config: FedpragConfig
    rounds: list[RoundReport]
    dataset: Dataset
    new: Passage
    canaries: list[str]
    texts: list[str]


POLY = {"federation.rounds": 2, "federation.local_epochs": 40, "federation.min_sites": 3,
        "federation.home_experts": 0, "poly.batch_size": 64, "poly.incremental_epochs": 32}
"""Poly-PRAG: a last-layer pool (new passages encode routing-only) on the built-in model. A new
passage's routing row takes 32 steps, not 8: on this small pool, 8 steps answered the held-out
person's 6 questions at 0.17 to 0.50 as the pool's rounding moved, 32 at 0.83 (docs/experiments.md §10.2)."""

DISTILLED = {"federation.mode": "distilled", "federation.rounds": 2, "federation.min_sites": 3,
             "distilled.start": "pretrained", "distilled.local_steps": 2}
"""DistilledPRAG: every site distils the shipped pretrained generator on its own documents."""


@contextmanager
def running_federation(work: Path, mode: str) -> Iterator[Federation]:
    """The federation of ``mode``, running until the block ends."""
    people, settings, path = (60, POLY, LAST_LAYER) if mode == "poly" else (24, DISTILLED, None)
    planted, canaries = with_unique_canaries(make_benchmark(BenchmarkSpec(people=people, sites=3, alpha=100.0, seed=3)))
    new = planted.passages[-1]
    kept = Dataset([p for p in planted.passages if p is not new], planted.questions, planted.augmentations)
    stores = prepare_sites(kept, work / "sites")
    config = load_config(path, {**settings, "federation.work_dir": str(work)})
    with (RecordedDeployment(work, [(s.root.name, s.root) for s in stores], "tiny", mode=mode) as deployment,
          (work / "logs" / "flwr-run.log").open("a") as out):  # it may start in the background (tests/phases.py)
        deployment.run(replace(config, federation=replace(config.federation, rounds=1)), out)
        deployment.restart_superlink()  # the coordinator restarts between the rounds and resumes
        rounds = deployment.run(config, out)
        yield Federation(work, deployment, stores, config, rounds, planted, new, canaries,
                         [p.text for p in planted.passages])
