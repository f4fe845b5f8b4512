"""What the federation tests share: sites with planted canaries, the CLI call, and log parsing."""

import json
import secrets
import subprocess
import sys
from pathlib import Path

from fedprag.client.store import SiteStore
from fedprag.cluster.simulation import prepare_sites
from fedprag.shared.data.benchmark import BenchmarkSpec, make_benchmark
from fedprag.shared.data.schema import Dataset, Passage

CANARIES = ["QZXCANARY7781", "Vorbluq Tessamine"]
LAST_LAYER = Path(__file__).resolve().parents[2] / "benchmarks" / "poly_last_layer.toml"
"""The last-layer pool's configuration (new passages encode routing-only), by absolute path."""


def canary_sites(work):
    """Site stores whose passages carry planted canary strings, plus one site with no passages
    (its round fails); returns the stores that hold passages."""
    dataset = make_benchmark(BenchmarkSpec(people=9, sites=3, alpha=100.0, seed=2))
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


def federate_command(work, spec, rounds, runtime):
    """The ``fedprag federate`` command line an operator would type."""
    return [sys.executable, "-m", "fedprag.cli", "--quiet", "federate", "--model", spec, "--rounds", str(rounds),
            "--min-sites", "2", "--local-epochs", "1", "--runtime", runtime, "--work-dir", str(work)]


def federate(work, spec, rounds, runtime):
    return subprocess.run(federate_command(work, spec, rounds, runtime), capture_output=True, text=True,
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
