"""A site's inbox: files the owner drops in are ingested into the store whole or not at all.

A file (``.jsonl``, ``.parquet`` or ``.txt``) is taken once its size held from one scan to the
next (move it in atomically, so that no scan sees it half-written). Its passages are stored, then
it moves to ``done/``; a file that is not valid moves to ``rejected/`` beside a ``.error`` file
naming the row, and nothing of it is stored.
A file leaves the inbox only after its passages are stored, so a crash mid-file loses nothing and
ingesting it again is a no-op.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from fedprag.client.sources import read_sources
from fedprag.client.store import SiteStore
from fedprag.shared.data.schema import DatasetError
from fedprag.shared.io import atomic_write_text
from fedprag.shared.log import get_logger

log = get_logger(__name__)

SUFFIXES = (".jsonl", ".parquet", ".txt")


@dataclass
class Scan:
    """What one scan of the inbox did."""

    taken: int = 0
    """Files whose passages are now stored."""
    errors: list[str] = field(default_factory=list)
    """Why each refused file was refused (names the file and row, never quotes a passage)."""


class Inbox:
    """The folder a site's owner drops files into, and the counts of what it took and refused."""

    def __init__(self, folder: Path, store: SiteStore):
        self.folder, self.store = folder, store
        for path in (folder, folder / "done", folder / "rejected"):
            path.mkdir(parents=True, exist_ok=True)
        self.accepted = self.rejected = 0
        self._sizes: dict[Path, int] = {}

    def _settled(self) -> Iterator[Path]:
        """Inbox files whose size held since the last scan, oldest first."""
        sizes = {}
        for path in sorted(self.folder.iterdir(), key=lambda p: p.stat().st_mtime if p.exists() else 0):
            if path.is_file() and path.suffix in SUFFIXES and not path.name.startswith("."):
                sizes[path] = path.stat().st_size
        ready = [p for p, size in sizes.items() if self._sizes.get(p) == size]
        self._sizes = {p: s for p, s in sizes.items() if p not in ready}
        yield from ready

    def scan(self) -> Scan:
        """Ingest every settled file into the store."""
        scan = Scan()
        for path in self._settled():
            try:
                report = self.store.add_read(read_sources([path]))
            except DatasetError as exc:
                self.rejected += 1
                scan.errors.append(f"inbox: {exc}")
                atomic_write_text(self.folder / "rejected" / f"{path.name}.error", f"{exc}\n")
                os.replace(path, self.folder / "rejected" / path.name)
                log.warning("daemon.inbox.rejected", file=path.name, reason=str(exc)[:300])
                continue
            os.replace(path, self.folder / "done" / path.name)
            self.accepted += 1
            scan.taken += 1
            log.info("daemon.inbox.ingested", file=path.name, added=report.added, unchanged=report.unchanged,
                     split=report.split)
        return scan
