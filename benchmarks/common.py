"""What every benchmark script shares: its command line, configuration, logging and side-by-side timing."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from fedprag.shared import log
from fedprag.shared.config import FedpragConfig, load_config
from fedprag.shared.data.augment import dataset_augmentations, own_augmentations
from fedprag.shared.data.schema import Augmentation, Dataset, Passage
from fedprag.shared.methods.prag import PRAGConfig
from fedprag.shared.methods.prag import serializer as prag_serializer
from fedprag.shared.methods.prag.layers import PRAGAdapters
from fedprag.shared.models.augmenter import make_augmenter
from fedprag.shared.models.loading import BaseModel

RESULTS = Path(__file__).resolve().parent / "results"


def setup(doc: str, work: str, argv: list[str] | None = None,
          extra: dict[str, dict] | None = None) -> tuple[argparse.Namespace, FedpragConfig]:
    """Parse ``--config``, ``--out``, ``--work`` (and ``extra`` options); load the configuration."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="TOML configuration file")
    parser.add_argument("--out", default=str(RESULTS), help="results directory")
    parser.add_argument("--work", default=work, help="scratch directory for indexes and encodings")
    for flag, options in (extra or {}).items():
        parser.add_argument(flag, **options)
    args = parser.parse_args(argv)
    log.configure()
    return args, load_config(args.config)


def timed_side_by_side(paths: dict[str, Callable[[], None]], repeats: int) -> dict[str, list[float]]:
    """Seconds per run of each path, timed in ``repeats`` interleaved rounds (after one warm-up).

    Every round runs every path once, in a rotated order, so drift in the machine's speed (which on
    a shared 2-core host moves absolute figures by 20–30% from one minute to the next) hits all
    paths alike; compare paths with :func:`median_ratio`.
    """
    names = list(paths)
    for name in names:
        paths[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            started = time.perf_counter()
            paths[name]()
            times[name].append(time.perf_counter() - started)
    return times


def median_ratio(times: dict[str, list[float]], slow: str, fast: str) -> float:
    """Median over rounds of ``slow``'s time over ``fast``'s in the same round (fast's speed-up)."""
    return statistics.median(s / f for s, f in zip(times[slow], times[fast]))


def prag_bytes_at(count: int, like: PRAGAdapters, config: PRAGConfig, base_digest: str, scratch: Path) -> int:
    """Bytes on disk of ``count`` per-passage LoRAs shaped like ``like``'s (a real file, zero-filled)."""
    zeros = PRAGAdapters([f"x{i}" for i in range(count)],
                         {n: (torch.zeros(count, *a.shape[1:]), torch.zeros(count, *b.shape[1:]))
                          for n, (a, b) in like.factors.items()}, like.scale)
    return prag_serializer.save(scratch, zeros, config, base_digest)


def augmentations_for(config: FedpragConfig, base: BaseModel, dataset: Dataset, work: Path,
                      passages: list[Passage] | None = None) -> dict[str, Augmentation]:
    """``passages``' augmentations as ``config.augment`` says, as :func:`~fedprag.shared.eval.harness.evaluate`
    gets them: the dataset's own where it has one (unless ``augment.use_dataset`` is off), else the
    configured augmenter's (cached under ``work/augment``)."""
    augment = make_augmenter(config.augment, base, work / "augment")
    return dataset_augmentations(own_augmentations(dataset, config.augment.use_dataset), augment, passages)
