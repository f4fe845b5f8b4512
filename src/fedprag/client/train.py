"""A site's encoding work: its share of a federated round, and routing rows for new passages.

In a Poly-PRAG round the site receives the current pool, continues training it together with its
own private routing rows on its passages' augmentation, keeps the routing rows, and sends back the
trained experts plus its routing mass per expert (``m_sk = Σ_p w_pk``). Between rounds, passages
that arrive are encoded routing-only against the pool the coordinator released, with the pool
frozen: the site's other rows and the pool stay as they are.

In a distilled round the site receives the current generator and distils it on its own documents
(:func:`generator_round`): the teacher is the base model with a document in context, the student
the mask tokens plus the generated LoRA, both run here, and only the generator goes back. A
passage that arrives later needs no encoding at all: the released generator reads it at query time.

Passage text stays in the site store.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Mapping

import numpy as np
import torch

from fedprag.client.store import SiteStore
from fedprag.shared.data.augment import Augmenter
from fedprag.shared.data.schema import Augmentation
from fedprag.shared.log import get_logger
from fedprag.shared.lora.layers import attach_lora
from fedprag.shared.methods.distilled.config import DistilledConfig
from fedprag.shared.methods.distilled.serializer import generator_arrays, load_arrays
from fedprag.shared.methods.distilled.trainer import (
    DistilledEncoder,
    Schedule,
    distil,
    document_sampler,
    new_encoder,
)
from fedprag.shared.methods.poly.config import PolyConfig
from fedprag.shared.methods.poly.layers import ExpertPool, RoutingTable, routing_weights
from fedprag.shared.methods.poly.serializer import pool_arrays, pool_from_arrays, router_arrays, router_from_arrays
from fedprag.shared.methods.poly.trainer import encode_incremental, train_pool, train_query_router
from fedprag.shared.models.augment_config import AugmentConfig
from fedprag.shared.models.augmenter import make_augmenter
from fedprag.shared.models.loading import BaseModel
from fedprag.shared.retrieval.encoder import EMBEDDING_DIM
from fedprag.shared.wire import (
    GeneratorRelease,
    GeneratorTask,
    GeneratorUpdate,
    PoolRelease,
    ReleaseAck,
    RoundTask,
    SiteUpdate,
)

log = get_logger(__name__)

Embed = Callable[[list[str]], np.ndarray]


class RememberedEmbed:
    """An embedding function that embeds each text once: a site's questions are the same every round."""

    def __init__(self, embed: Embed):
        self.embed = embed
        self.known: dict[str, np.ndarray] = {}

    def __call__(self, texts: list[str]) -> np.ndarray:
        new = list(dict.fromkeys(t for t in texts if t not in self.known))
        if new:
            self.known.update(zip(new, self.embed(new)))
        return np.stack([self.known[t] for t in texts]) if texts else self.embed(texts)


class CannotEncode(RuntimeError):
    """New passages cannot be encoded against this pool; they stay pending and are not served."""


def router_steps(rows: RoutingTable, augmentations: Mapping[str, Augmentation], pool: ExpertPool,
                 start: Mapping[str, np.ndarray], config: PolyConfig, embed: Embed) -> tuple[dict[str, np.ndarray], int]:
    """The site's steps on the learned query router, continued from the coordinator's ``start`` on
    the site's own questions (its passages' QA pairs) against its rows; the parameters and the
    question count (none without a router or encoded passages)."""
    questions = sum(len(augmentations[p].qa) for p in rows.passage_ids)
    if not start or not questions:
        return {}, 0
    router = router_from_arrays(start, pool, EMBEDDING_DIM)
    trained = train_query_router(embed, rows, augmentations, epochs=config.router_epochs, lr=config.router_lr,
                                 start=router)
    return router_arrays(trained), questions


def local_round(store: SiteStore, base: BaseModel, task: RoundTask, embed: Embed, augment: Augmenter) -> SiteUpdate:
    """Train this site's share of round ``task.round``; persists the site's routing rows."""
    config = PolyConfig.from_numbers(task.settings)
    pool = pool_from_arrays(task.experts, config.scale, config.routing)
    with store.locked():
        passages = store.passages()
        if not passages:
            raise RuntimeError(f"site {store.state.site_id} has no passages; run 'fedprag client ingest' first")
        augmentations = store.augmentations(augment, passages)
        if not store.state.home_experts and task.settings.get("home_experts", 0) > 0:
            size, block = int(task.settings["home_experts"]), int(task.settings["home_block"])
            store.state.home_experts = [(block * size + j) % pool.n_experts for j in range(size)]
        start = store.routing(pool, base.digest, store.state.home_experts)
        trained = train_pool(base, attach_lora(base.model), passages, augmentations, config, show_progress=False,
                             start=(pool, start))
        store.save_routing(trained.routing, trained.pool, task.version, base.digest)
        store.state.rounds_joined.append(task.round)
        store.state.pool_version = task.version
        store.save_state()
    router, questions = router_steps(trained.routing, augmentations, trained.pool, task.router, config, embed)
    mass = routing_weights(trained.routing.logits).sum(0)
    log.info("client.round.done", site=store.state.site_id, round=task.round, passages=len(passages),
             loss=round(trained.loss, 4))
    return SiteUpdate(site=store.state.site_id, round=task.round, version=task.version,
                      passages=len(passages), sequences=trained.sequences, loss=trained.loss,
                      experts=pool_arrays(trained.pool), mass={"routing_mass": mass.numpy()}, questions=questions,
                      router=router)


def keep_release(store: SiteStore, base: BaseModel, release: PoolRelease) -> None:
    """Keep a released pool version in the store (the routing service and new passages use it)."""
    config = PolyConfig.from_numbers(release.settings)
    pool = pool_from_arrays(release.experts, config.scale, config.routing)
    with store.locked():
        store.save_pool(pool, config, release.version, base.digest)
    log.info("client.release.kept", site=store.state.site_id, version=release.version)


def encode_pending(store: SiteStore, base: BaseModel, pool: ExpertPool, config: PolyConfig,
                   augment: Augmenter) -> RoutingTable:
    """Encode every pending passage routing-only against ``pool``; returns (and stores) their rows.

    Raises :class:`CannotEncode` if the pool is not one that takes new passages.
    """
    with store.locked():
        pending = store.pending(pool, base.digest)
        if not pending:
            return RoutingTable([], torch.empty(0, pool.n_groups, pool.n_experts))
        if not config.encodes_new_passages:
            raise CannotEncode(f"{len(pending)} passages wait for the next round: this pool (poly.layers = "
                               f"'{config.layers}') cannot encode new passages routing-only; a pool with "
                               "poly.layers = 'last' can (see benchmarks/poly_last_layer.toml)")
        rows = encode_incremental(base, attach_lora(base.model), pool, pending, store.augmentations(augment, pending),
                                  config,
                                  show_progress=False)
        store.add_routing(rows, pool, base.digest)
    log.info("client.encode.done", site=store.state.site_id, passages=len(pending))
    return rows


def release_ack(store: SiteStore, base: BaseModel, release: PoolRelease, embed: Embed,
                augment: Augmenter) -> ReleaseAck:
    """What a site answers a release with: the version kept, its encoded and pending passages, and
    its last steps on the learned query router, against its rows for the released pool."""
    pool = store.pool(base.digest)[0]
    with store.locked():  # the augmenter may write its cache
        rows = store.encoded(pool, base.digest)
        encoded = [p for p in store.passages() if p.passage_id in set(rows.passage_ids)]
        augmentations = store.augmentations(augment, encoded)
    router, questions = router_steps(rows, augmentations, pool, release.router,
                                     PolyConfig.from_numbers(release.settings), embed)
    return ReleaseAck(site=store.state.site_id, version=release.version, encoded=len(rows.passage_ids),
                      pending=len(store.passages()) - len(rows.passage_ids), questions=questions, router=router)


def _round_seed(site: str, round_number: int, seed: int) -> int:
    """The seed of a site's examples in one round: different per site and round, the same on a rerun."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{site}:{round_number}".encode()).digest()[:8], "little")


def received_generator(base: BaseModel, settings: Mapping[str, float],
                       arrays: Mapping[str, np.ndarray]) -> tuple[DistilledEncoder, DistilledConfig]:
    """The generator a coordinator sent, bound to ``base`` (refused if its shapes are not the settings')."""
    config = DistilledConfig.from_numbers(settings)
    encoder = new_encoder(base, attach_lora(base.model), config)
    load_arrays(encoder, arrays)
    return encoder, config


def generator_round(store: SiteStore, base: BaseModel, task: GeneratorTask, augment: Augmenter) -> GeneratorUpdate:
    """Distil the generator on this site's documents for ``local_steps`` steps (with FedProx's
    pull towards the received generator when ``proximal_mu`` > 0); returns it with counts and the loss."""
    encoder, config = received_generator(base, task.settings, task.generator)
    with store.locked():  # the augmenter may write its cache
        passages = store.passages()
        if not passages:
            raise RuntimeError(f"site {store.state.site_id} has no passages; run 'fedprag client ingest' first")
        augmentations = store.augmentations(augment, passages)
    sample = document_sampler(passages, augmentations, config)
    anchor = tuple(p.detach().clone() for p in encoder.generator.parameters())
    schedule = Schedule(config.local_steps, config.finetune_lr, decay=False, proximal_mu=config.proximal_mu,
                        anchor=anchor)
    loss = distil(encoder, sample, schedule, random.Random(_round_seed(store.state.site_id, task.round, config.seed)),
                  show_progress=False)
    with store.locked():
        store.state.rounds_joined.append(task.round)
        store.save_state()
    qa_pairs = sum(len(augmentations[p.passage_id].qa) for p in passages if p.passage_id in augmentations)
    log.info("client.round.done", site=store.state.site_id, round=task.round, passages=len(passages), mode="distilled",
             loss=round(loss, 4))
    return GeneratorUpdate(site=store.state.site_id, round=task.round, version=task.version, passages=len(passages),
                           qa_pairs=qa_pairs, loss=loss, generator=generator_arrays(encoder))


def keep_generator(store: SiteStore, base: BaseModel, release: GeneratorRelease) -> None:
    """Keep a released generator in the store (the routing service answers with it)."""
    encoder, _ = received_generator(base, release.settings, release.generator)
    with store.locked():
        store.save_generator(encoder, release.version)
        store.state.pool_version = release.version
        store.save_state()
    log.info("client.release.kept", site=store.state.site_id, version=release.version, mode="distilled")


def site_augmenter(store: SiteStore, base: BaseModel, config: AugmentConfig) -> Augmenter:
    """The augmenter ``config`` chooses for this site, caching what it writes in the site's store."""
    return make_augmenter(config, base, store.root / "augment")
