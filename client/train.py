"""A site's part of a federated round: train on local passages, return only what the schema admits.

The site receives the current pool, continues training it together with its own private routing
rows on its passages' augmentation, keeps the routing rows, and sends back the trained experts
plus its routing mass per expert (``m_sk = Σ_p w_pk``). Passage text stays in the site store.
"""

from __future__ import annotations

from fedprag.client.store import SiteStore
from fedprag.shared.log import get_logger
from fedprag.shared.lora.layers import attach_lora
from fedprag.shared.methods.poly.config import PolyConfig
from fedprag.shared.methods.poly.layers import routing_weights
from fedprag.shared.methods.poly.serializer import pool_arrays, pool_from_arrays
from fedprag.shared.methods.poly.trainer import train_pool
from fedprag.shared.models.loading import BaseModel
from fedprag.shared.wire import RoundTask, SiteUpdate

log = get_logger(__name__)


def local_round(store: SiteStore, base: BaseModel, task: RoundTask) -> SiteUpdate:
    """Train this site's share of round ``task.round``; persists the site's routing rows."""
    config = PolyConfig.from_numbers(task.settings)
    pool = pool_from_arrays(task.experts, config.scale, config.routing)
    passages = store.passages()
    if not passages:
        raise RuntimeError(f"site {store.state.site_id} has no passages; run 'fedprag client ingest' first")
    augmentations = store.augmentations()
    if not store.state.home_experts and task.settings.get("home_experts", 0) > 0:
        size, block = int(task.settings["home_experts"]), int(task.settings["home_block"])
        store.state.home_experts = [(block * size + j) % pool.n_experts for j in range(size)]
    start = store.routing(pool, base.digest, store.state.home_experts)
    trained = train_pool(base, attach_lora(base.model), passages, augmentations, config, show_progress=False,
                         start=(pool, start))
    store.save_routing(trained.routing, trained.pool, task.pool_version, base.digest)
    store.state.rounds_joined.append(task.round)
    store.state.pool_version = task.pool_version
    store.save_state()
    mass = routing_weights(trained.routing.logits).sum(0)
    log.info("client.round.done", site=store.state.site_id, round=task.round, passages=len(passages),
             loss=round(trained.loss, 4))
    return SiteUpdate(site=store.state.site_id, round=task.round, pool_version=task.pool_version,
                      passages=len(passages), sequences=trained.sequences, loss=trained.loss,
                      experts=pool_arrays(trained.pool), mass={"routing_mass": mass.numpy()})
