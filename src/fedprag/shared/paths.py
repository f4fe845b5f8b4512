"""Where fedprag keeps caches: ``$FEDPRAG_HOME`` or ``~/.cache/fedprag``."""

from __future__ import annotations

import os
from pathlib import Path


def fedprag_home() -> Path:
    """The cache root; built models and indexes live below it."""
    return Path(os.environ.get("FEDPRAG_HOME") or Path.home() / ".cache" / "fedprag")
