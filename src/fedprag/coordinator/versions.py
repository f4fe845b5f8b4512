"""Which versions a registry holds, read from its directory names alone: no torch, so the query
API's ingress (which holds no model) can list them."""

from __future__ import annotations

import re
from pathlib import Path

_VERSION = re.compile(r"^v(\d{6})$")


def version_dir(root: str | Path, version: int) -> Path:
    """Where version ``version`` lives under the registry ``root``: ``v000003``."""
    return Path(root) / f"v{version:06d}"


def versions_at(root: str | Path) -> list[int]:
    """The complete versions under ``root``, oldest first (none if there is no registry yet)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(int(m.group(1)) for p in root.iterdir() if (m := _VERSION.match(p.name)))
