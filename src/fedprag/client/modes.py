"""The federation modes at a site: its share of a round, taking a release, and serving queries with it.

The coordinator's half of each mode is :mod:`fedprag.coordinator.modes`; this module is the site's
half, under the same name. They are two classes because they run on different premises: a site
never imports the coordinator's code, nor the coordinator a site's.

A site mode is made once per site process with what the site holds warm: its store, the base
model, the embedder of its router questions and its augmenter. A ClientApp with no daemon (the
simulation, a bare SuperNode) uses only :meth:`SiteMode.work`; the site daemon also asks it for the
router that answers queries (:meth:`SiteMode.serve`) and to serve passages that arrive
(:meth:`SiteMode.encode`). A third mode is one more class here and one entry in :data:`SITE_MODES`.
"""

from __future__ import annotations

import functools
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from fedprag.client.routing_service import FactorRouter, SiteIndex, SiteRouter
from fedprag.client.store import SiteStore
from fedprag.client.train import (
    Embed,
    RememberedEmbed,
    encode_pending,
    generator_round,
    keep_generator,
    keep_release,
    local_round,
    release_ack,
    site_augmenter,
)
from fedprag.shared.data.augment import Augmenter
from fedprag.shared.log import get_logger
from fedprag.shared.lora.layers import attach_lora
from fedprag.shared.lora.store import EncodingMismatch
from fedprag.shared.methods.base import Routing
from fedprag.shared.methods.poly.model import PolyModel
from fedprag.shared.methods.poly.serializer import export_peft
from fedprag.shared.models.augment_config import AugmentConfig
from fedprag.shared.models.loading import BaseModel, load_causal_lm
from fedprag.shared.retrieval.encoder import SentenceEncoder
from fedprag.shared.wire import (
    GeneratorRelease,
    GeneratorTask,
    PoolRelease,
    ReleaseAck,
    RoundTask,
    WireMessage,
)

log = get_logger(__name__)


@dataclass
class Serving:
    """What a site serves queries with after a release: its router (``None``: nothing yet), how it
    encodes passages that arrive (for the status), and why it cannot serve, where it cannot."""

    router: SiteIndex | None
    encoding: str
    error: str = ""


class SiteMode(ABC):
    """One federation mode's work at a site (see the module docstring)."""

    name: ClassVar[str]
    task: ClassVar[type[WireMessage]]
    release: ClassVar[type[WireMessage]]
    unreleased: ClassVar[str]
    """The status's encoding line before the coordinator released anything."""

    def __init__(self, store: SiteStore, base: BaseModel, embed: Embed | None = None, augment: Augmenter | None = None):
        """``embed`` (the site's router questions) and ``augment`` (its encoding data) are what
        rounds and releases need; serving and exporting need neither."""
        self.store, self.base, self.embed, self.augment = store, base, embed, augment

    def work(self, message: WireMessage, kept: Callable[[], None] = lambda: None) -> WireMessage:
        """Answer a coordinator's message: a round's task with this site's update; a release by
        keeping it, then (once ``kept`` has run: the daemon serves it) acknowledging it."""
        if isinstance(message, self.task):
            return self.train(message)
        if isinstance(message, self.release):
            self.keep(message)
            kept()
            return self.acknowledge(message)
        raise TypeError(f"a site in federation.mode = '{self.name}' does no '{message.KIND}' work")

    @abstractmethod
    def train(self, task: WireMessage) -> WireMessage:
        """This site's share of a round: its update."""

    @abstractmethod
    def keep(self, release: WireMessage) -> None:
        """Keep a released version in the store."""

    @abstractmethod
    def acknowledge(self, release: WireMessage) -> ReleaseAck:
        """What the site answers a release with, once it kept it."""

    @abstractmethod
    def serve(self, encoder: SentenceEncoder, factor_noise: float) -> Serving:
        """The router that answers queries with the version the store holds."""

    @abstractmethod
    def encode(self, router: SiteIndex) -> int:
        """Serve the passages stored since ``router`` was made; returns how many. Raises
        :class:`~fedprag.client.train.CannotEncode` or :class:`EncodingMismatch` where they must
        wait for a round."""

    @abstractmethod
    def export(self, passage_id: str, directory: Path) -> Path:
        """One passage's encoding under the released version, as a PEFT adapter directory
        (``fedprag export``); a ``ValueError`` says why it cannot be."""


class PoolSite(SiteMode):
    """Poly-PRAG at a site: train the pool and the site's routing rows in a round; serve the
    released pool over the passages with a routing row; encode new passages routing-only."""

    name, task, release = "poly", RoundTask, PoolRelease
    unreleased = "no pool released yet"

    def train(self, task: RoundTask) -> WireMessage:
        return local_round(self.store, self.base, task, self.embed, self.augment)

    def keep(self, release: PoolRelease) -> None:
        keep_release(self.store, self.base, release)

    def acknowledge(self, release: PoolRelease) -> ReleaseAck:
        return release_ack(self.store, self.base, release, self.embed, self.augment)

    def serve(self, encoder: SentenceEncoder, factor_noise: float) -> Serving:
        """When the released pool no longer fits the site's rows (another number of experts or
        groups), the rows are fitted again, routing-only, if the pool encodes new passages."""
        released = self.store.pool(self.base.digest)
        if released is None:
            return Serving(None, self.unreleased)
        pool, config, version = released
        encoding = ("routing-only against the released pool" if config.encodes_new_passages else
                    f"waits for rounds (poly.layers = '{config.layers}' cannot encode new passages)")
        try:
            return Serving(SiteRouter(self.store, encoder, self.base.digest, pool, version), encoding)
        except EncodingMismatch as exc:
            if not config.encodes_new_passages:
                return Serving(None, encoding, f"routing rows do not fit pool version {version} ({exc}); they wait "
                                               "for the next round")
            log.warning("daemon.refit", version=version, reason=str(exc)[:200])
            with self.store.locked():
                self.store.clear_routing()
            return Serving(SiteRouter(self.store, encoder, self.base.digest, pool, version), encoding)

    def export(self, passage_id: str, directory: Path) -> Path:
        """The released pool with the passage's own routing, as the site answers when the passage is
        a query's only hit (its top-m experts)."""
        released = self.store.pool(self.base.digest)
        if released is None:
            raise ValueError(f"site {self.store.state.site_id}: no pool released yet, so no passage is encoded")
        pool, config, _ = released
        rows = self.store.encoded(pool, self.base.digest)
        if passage_id not in rows.passage_ids:
            stored = passage_id in {p.passage_id for p in self.store.passages()}
            raise ValueError(f"passage '{passage_id}': " + ("stored but not encoded yet (pending)" if stored else
                                                            "not in this site's store"))
        weights = PolyModel(pool, config, rows).expert_weights([Routing(passage_ids=(passage_id,), scores=(1.0,))])
        return export_peft(directory, pool, weights[0], str(self.base.path))

    def encode(self, router: SiteRouter) -> int:
        released = self.store.pool(self.base.digest)
        if released is None:
            return 0
        pool, config, _ = released
        rows = encode_pending(self.store, self.base, pool, config, self.augment)
        if rows.passage_ids:
            router.add(rows)
        return len(rows.passage_ids)


class GeneratorSite(SiteMode):
    """DistilledPRAG at a site: distil the generator on the site's documents in a round; serve the
    released generator over every stored passage (new ones need no encoding).

    Queries are answered on a second copy of the base model, made at the first release, so that
    queries and rounds never share one; one query at a time uses it, across releases.
    """

    name, task, release = "distilled", GeneratorTask, GeneratorRelease
    unreleased = "no generator released yet"

    def __init__(self, store: SiteStore, base: BaseModel, embed: Embed | None = None, augment: Augmenter | None = None):
        super().__init__(store, base, embed, augment)
        self.serving_base: BaseModel | None = None
        self.serving_lock = threading.Lock()

    def train(self, task: GeneratorTask) -> WireMessage:
        return generator_round(self.store, self.base, task, self.augment)

    def keep(self, release: GeneratorRelease) -> None:
        keep_generator(self.store, self.base, release)

    def acknowledge(self, release: GeneratorRelease) -> ReleaseAck:
        """Every passage is served with the released generator, so none is pending."""
        return ReleaseAck(site=self.store.state.site_id, version=release.version,
                          encoded=len(self.store.passages()), pending=0)

    def serve(self, encoder: SentenceEncoder, factor_noise: float) -> Serving:
        if self.serving_base is None:
            self.serving_base = load_causal_lm(str(self.base.path), show_progress=False)
        released = self.store.generator(self.serving_base, attach_lora(self.serving_base.model))
        if released is None:
            return Serving(None, self.unreleased)
        generator, version = released
        return Serving(FactorRouter(self.store, encoder, generator, version, factor_noise, self.serving_lock),
                       "none needed: the released generator reads passages at query time")

    def export(self, passage_id: str, directory: Path) -> Path:
        """Not offered: a generated LoRA answers only with the passage's mask tokens in the prompt,
        whose embedding the query API installs on the base model, and a PEFT adapter directory
        carries no new token."""
        raise ValueError("federation.mode = 'distilled': a generated LoRA needs the passage's mask tokens in the "
                         "prompt and their embedding on the base model, which a PEFT adapter cannot carry; "
                         "export Poly-PRAG encodings instead")

    def encode(self, router: FactorRouter) -> int:
        new = [p.passage_id for p in self.store.passages()][len(router):]
        if new:
            router.add(new)
        return len(new)


SITE_MODES: dict[str, type[SiteMode]] = {mode.name: mode for mode in (PoolSite, GeneratorSite)}


def site_mode_for(message: WireMessage) -> type[SiteMode]:
    """The site mode whose task or release ``message`` is."""
    for mode in SITE_MODES.values():
        if isinstance(message, (mode.task, mode.release)):
            return mode
    raise TypeError(f"a site does not answer {message.KIND} messages")


@functools.lru_cache(maxsize=1)
def _questions_embed() -> RememberedEmbed:
    return RememberedEmbed(SentenceEncoder().embed)


@functools.lru_cache(maxsize=2)
def _base(spec: str) -> BaseModel:
    return load_causal_lm(spec)


def run_locally(root: Path, model_spec: str, request: WireMessage, threads: int = 1,
                augment: AugmentConfig | None = None) -> WireMessage:
    """:meth:`SiteMode.work` in this process, for a ClientApp with no site daemon (simulation, a bare
    SuperNode); passages without the owner's augmentation get ``augment``'s (default: the defaults)."""
    torch.set_num_threads(threads)
    store, base = SiteStore(root), _base(model_spec)
    mode = site_mode_for(request)(store, base, _questions_embed(),
                                  site_augmenter(store, base, augment or AugmentConfig()))
    return mode.work(request)
