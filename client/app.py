"""The site's Flower ClientApp: decode the round task, train locally, reply with a site update.

Which data directory a node serves comes from its node config: ``site-dir`` (a deployed
SuperNode, ``--node-config "site-dir='/data/site' model='tiny'"``), or ``partition-id`` under the
federation's ``sites`` folder (a simulated node). The module-level ``client_app`` is what a
deployed SuperNode runs; it takes the base model from the node config's ``model`` (default
``tiny``), so each owner points at its own copy of the weights. Every reply is also appended, byte for byte, to the site's
egress log, so an owner can audit what left.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedprag.client.store import SiteStore
from fedprag.client.train import local_round
from fedprag.shared.log import configure as configure_logging
from fedprag.shared.log import get_logger
from fedprag.shared.models.loading import BaseModel, load_causal_lm
from fedprag.shared.wire import RoundTask, record_blobs

log = get_logger(__name__)


class SiteFailure(RuntimeError):
    """A site could not complete its round; carries only the kind of failure, never its text."""


@functools.lru_cache(maxsize=2)
def _base(spec: str) -> BaseModel:
    return load_causal_lm(spec)


def site_dir(context: Context, sites_root: str | None) -> Path:
    """The data directory this node serves."""
    config = context.node_config
    if "site-dir" in config:
        return Path(str(config["site-dir"]))
    if sites_root is None or "partition-id" not in config:
        raise KeyError("node config: a deployed SuperNode needs site-dir='<the site's data directory>'")
    return Path(sites_root) / f"site-{int(config['partition-id'])}"


def audit(store: SiteStore, record: RecordDict) -> None:
    """Append the exact serialised bytes of an outgoing message to the site's egress log.

    ``<data_dir>/egress/<site>.bin`` lets a data owner inspect everything that left the site.
    """
    folder = store.root / "egress"
    folder.mkdir(exist_ok=True)
    with open(folder / f"{store.state.site_id}.bin", "ab") as out:
        out.writelines(record_blobs(record))


def make_client_app(model_spec: str | None = None, sites_root: str | None = None, threads: int = 1) -> ClientApp:
    """A ClientApp bound to a base model (else the node config's ``model``) and, for simulation,
    the folder of site stores."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        configure_logging()  # a deployed ClientApp logs to its SuperNode's log, on site
        torch.set_num_threads(threads)
        where = str(context.node_config.get("site-dir", context.node_config.get("partition-id", "?")))
        try:
            task = RoundTask.from_record(msg.content)
            store = SiteStore(site_dir(context, sites_root))
            spec = model_spec or str(context.node_config.get("model", "tiny"))
            record = local_round(store, _base(spec), task).to_record()
        except Exception as exc:  # noqa: BLE001 - every failure is reported, by kind only
            # The reason stays on site; only the failure's kind crosses the boundary (an exception
            # message could quote a passage).
            log.error("client.round.failed", kind=type(exc).__name__, site=where)
            raise SiteFailure(type(exc).__name__) from None
        audit(store, record)
        return Message(record, reply_to=msg)

    return app


client_app = make_client_app()
