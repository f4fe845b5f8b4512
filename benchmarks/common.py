"""What every benchmark script shares: its command line, configuration and logging."""

from __future__ import annotations

import argparse
from pathlib import Path

from shared import log
from shared.config import FedpragConfig, load_config

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
