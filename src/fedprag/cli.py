"""The ``fedprag`` command line: one entry point, one subcommand group per job.

    fedprag model build-tiny     rebuild a built-in base model from its recipe (the default ships)
    fedprag model build-generator  distil DistilledPRAG's generator for a base model (the default's ships)
    fedprag data make            write the knowledge benchmark as Parquet
    fedprag data validate        check a dataset directory against the schema
    fedprag eval                 compare closed-book, standard RAG, PRAG, PRAG-combine and Poly-PRAG
    fedprag demo                 the main job: federated rounds over N sites, then the results table
    fedprag federate             run or resume federated rounds over existing site stores
    fedprag certs                TLS and SuperNode keys for a federation on this machine
    fedprag client ingest|status a data owner's site store
    fedprag client run           the data owner's daemon
    fedprag export               one encoded passage as a PEFT adapter, at its site
    fedprag serve                the query API and the serving actor group (Ray Serve)

Every command reads the one typed configuration (``--config FILE``, ``FEDPRAG__SECTION__FIELD``
environment variables, ``--set section.field=value``); command flags are shorthands for fields.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from fedprag.shared import log
from fedprag.shared.config import ConfigError, FedpragConfig, load_config
from fedprag.shared.data.schema import DatasetError
from fedprag.shared.models.errors import ModelLoadError
from fedprag.shared.models.tiny.recipe import RECIPES, recipe_named

Handler = Callable[[argparse.Namespace, FedpragConfig], int]


def _set_pairs(pairs: Sequence[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects section.field=value, got '{pair}'")
        out[key.strip()] = value.strip()
    return out


def _cmd_build_tiny(args: argparse.Namespace, config: FedpragConfig) -> int:
    from fedprag.shared.models.tiny.build import build_tiny
    from fedprag.shared.models.tiny.shipped import differing, ship

    recipe = recipe_named(args.recipe)
    path = build_tiny(recipe, show_progress=not args.quiet)
    print(f"{path}\n{(path / 'metrics.json').read_text()}")
    differ = differing(path)
    if differ is not None:
        print(f"every file equals the shipped {path.name}, bit for bit" if not differ else
              f"{', '.join(differ)} DIFFER from the shipped {path.name} ({recipe.numerics} numerics: "
              "see docs/experiments.md §1.5-1.6)")
    if args.ship:
        print(f"shipped: {ship(path)}")
    return 0


def _cmd_build_generator(args: argparse.Namespace, config: FedpragConfig) -> int:
    from fedprag.shared.lora.layers import attach_lora
    from fedprag.shared.methods.distilled.serializer import cached_generator, ship
    from fedprag.shared.models.loading import load_causal_lm

    base = load_causal_lm(config.model.path, show_progress=not args.quiet)
    _, path = cached_generator(base, attach_lora(base.model), config.distilled, show_progress=not args.quiet)
    print(path)
    if args.ship:
        print(f"shipped: {ship(path)}")
    return 0


def _cmd_data_make(args: argparse.Namespace, config: FedpragConfig) -> int:
    from fedprag.shared.data.benchmark import make_benchmark
    from fedprag.shared.data.schema import write_dataset

    dataset = make_benchmark(config.benchmark)
    write_dataset(dataset, args.out)
    kinds = {k: sum(q.kind == k for q in dataset.questions) for k in sorted({q.kind for q in dataset.questions})}
    print(f"wrote {len(dataset.passages)} passages over {config.benchmark.sites} sites and "
          f"{len(dataset.questions)} questions {kinds} to {args.out}")
    return 0


def _cmd_data_validate(args: argparse.Namespace, config: FedpragConfig) -> int:
    from fedprag.shared.data.schema import read_dataset

    dataset = read_dataset(args.dir)
    print(f"ok: {len(dataset.passages)} passages, {len(dataset.questions)} questions, "
          f"{len(dataset.augmentations)} augmentations")
    return 0


def _cmd_eval(args: argparse.Namespace, config: FedpragConfig) -> int:
    from fedprag.shared.data.benchmark import make_benchmark
    from fedprag.shared.data.schema import read_dataset, write_dataset
    from fedprag.shared.eval.harness import evaluate
    from fedprag.shared.eval.methods import build_methods
    from fedprag.shared.models.loading import load_causal_lm

    out = Path(config.eval.out)
    methods = build_methods(list(config.eval.methods), config.method_configs())
    data_dir = Path(config.eval.data) if config.eval.data else out / "data"
    if not config.eval.data:
        write_dataset(make_benchmark(config.benchmark), data_dir)
    dataset = read_dataset(data_dir)
    base = load_causal_lm(config.model.path, show_progress=not args.quiet)
    report = evaluate(dataset, base, methods, config.harness, out / "work", show_progress=not args.quiet,
                      augment=config.augment)
    json_path, md_path = report.write(out)
    print(report.to_markdown())
    print(f"results: {md_path} and {json_path}")
    return 0


def _federation_failures(handler: Handler) -> Handler:
    """Report a federation that could not start or finish in one line, with exit code 1."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace, config: FedpragConfig) -> int:
        from fedprag.cluster.deployment import DeploymentError

        try:
            return handler(args, config)
        except DeploymentError as exc:
            print(f"fedprag: federation failed: {exc}", file=sys.stderr)
            return 1

    return run


@_federation_failures
def _cmd_demo(args: argparse.Namespace, config: FedpragConfig) -> int:
    from fedprag.cluster.demo import running_federation, traffic_table, write_results
    from fedprag.shared.eval.federated import evaluate_federation

    with running_federation(config, show_progress=not args.quiet, serving=True) as federation:
        report = evaluate_federation(federation, config.method_configs(), config.harness, config.augment,
                                     Path(config.federation.work_dir) / "eval", show_progress=not args.quiet)
    md_path = write_results(report, federation.rounds, config.federation.work_dir)
    print(report.to_markdown())
    served = next(r for r in report.results if r.method == federation.model.name)
    print(f"Serving: {served.method} was asked over HTTP through the query API (Ray Serve); one question at a time "
          f"it took p50 {served.latency_ms_p50:.0f} ms, p95 {served.latency_ms_p95:.0f} ms.\n")
    print("Federated rounds (bytes each site sent):\n")
    print(traffic_table(federation.rounds))
    print(f"\nresults: {md_path}")
    return 0


@_federation_failures
def _cmd_federate(args: argparse.Namespace, config: FedpragConfig) -> int:
    if args.coordinator:
        return _campaign_at(args.coordinator, config)
    from fedprag.cluster.demo import traffic_table
    from fedprag.cluster.deployment import federate

    work = Path(config.federation.work_dir)
    sites = sorted((work / "sites").glob("site-*"), key=lambda p: (len(p.name), p.name))
    if not sites:
        raise FileNotFoundError(f"{work / 'sites'}: no site stores (site-0, site-1, …); ingest passages first")
    print(traffic_table(federate(config, sites)))
    return 0


def _campaign_at(address: str, config: FedpragConfig) -> int:
    """A campaign on a running coordinator: its rounds up to ``federation.rounds`` in total, then
    the release, with the coordinator's own settings; the ServerApp's log streams to standard output."""
    import tempfile

    from fedprag.cluster.superlink import Control, SuperLinkError

    if not config.coordinator.ca_cert or not Path(config.coordinator.ca_cert).is_file():
        raise ConfigError(f"coordinator.ca_cert: the federation's CA certificate is required to reach {address} "
                          f"(--ca FILE; got '{config.coordinator.ca_cert}')")
    with tempfile.TemporaryDirectory() as home:
        try:
            released = Control(address, config.coordinator.ca_cert, Path(home)).campaign(
                {"rounds": config.federation.rounds}, lambda line: print(line, end="", flush=True))
        except SuperLinkError as exc:
            print(f"fedprag: error: {exc}", file=sys.stderr)
            return 1
    if not released:
        print(f"fedprag: error: the campaign on {address} ended without its release; its log is above", file=sys.stderr)
    return 0 if released else 1


def _cmd_coordinator_run(args: argparse.Namespace, config: FedpragConfig) -> int:
    from fedprag.cluster.coordinator import run

    try:
        config.coordinator.check_files()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return run(config, lambda line: print(line, flush=True))


def _cmd_certs(args: argparse.Namespace, config: FedpragConfig) -> int:
    from fedprag.cluster.certs import write_node_keys, write_routing_cert, write_tls

    tls = write_tls(args.out, hosts=args.host, days=args.days)
    print(f"CA certificate:      {tls.ca_cert}   (coordinator.ca_cert, site.ca_cert)")
    print(f"SuperLink cert/key:  {tls.server_cert}, {tls.server_key}   (coordinator.tls_cert, coordinator.tls_key)")
    for name in args.node:
        keys = write_node_keys(args.out, name)
        print(f"SuperNode {name}: {keys.private_key}   (site.auth_key); "
              f"admit it: put {keys.public_key} in the coordinator's coordinator.keys_dir")
    for name in args.routing:
        routing = write_routing_cert(args.out, name, hosts=args.host, days=args.days)
        print(f"routing service {name}: {routing.server_cert}, {routing.server_key}   (site.routing_cert, site.routing_key)")
    return 0


def _cmd_client_ingest(args: argparse.Namespace, config: FedpragConfig) -> int:
    from fedprag.client.sources import read_sources

    passages = read_sources(args.sources)  # every source is checked before the store is created or touched
    from fedprag.client.store import SiteStore  # torch comes with the store: a bad source is refused without it

    store = SiteStore(args.data_dir, site_id=args.site_id)
    result = store.add_read(passages)
    split = f" ({result.split} long passages split into chunks)" if result.split else ""
    print(f"{store.state.site_id}: {result.added} passages added{split}, {result.unchanged} already stored, "
          f"{len(store.passages())} in total")
    return 0


def _cmd_export(args: argparse.Namespace, config: FedpragConfig) -> int:
    from fedprag.client.modes import SITE_MODES
    from fedprag.client.store import SiteStore
    from fedprag.shared.models.loading import load_causal_lm

    if not Path(args.data_dir).is_dir():
        raise FileNotFoundError(f"{args.data_dir}: no site store here")
    mode = SITE_MODES[config.federation.mode](SiteStore(args.data_dir), load_causal_lm(config.model.path))
    try:
        out = mode.export(args.passage_id, Path(args.out))
    except ValueError as exc:
        print(f"fedprag: error: {exc}", file=sys.stderr)
        return 2
    print(f"{out}: PEFT adapter for passage '{args.passage_id}' on {config.model.path}; load it with "
          "PeftModel.from_pretrained(base_model, path)")
    return 0


def _cmd_client_run(args: argparse.Namespace, config: FedpragConfig) -> int:
    from fedprag.client.admin import running_daemon
    from fedprag.client.daemon import SiteDaemon

    running = running_daemon(config.site.data_dir) if config.site.data_dir else None
    if running is not None:
        raise ConfigError(f"site.data_dir: a daemon (pid {running['pid']}) already serves {config.site.data_dir}")
    return SiteDaemon(config).run()


def _cmd_serve(args: argparse.Namespace, config: FedpragConfig) -> int:
    import signal
    import threading

    import yaml

    from fedprag.cluster.serving.app import serve_config, start, stop

    if args.deploy_config:
        print(yaml.safe_dump(serve_config(config.serve, args.deploy_config), sort_keys=False), end="")
        return 0
    try:
        config.serve.check_files()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    endpoints = start(config, address=args.address)
    print(f"query API: {endpoints.http}/v1/query (OpenAI-compatible: {endpoints.http}/v1, docs: {endpoints.http}/docs)"
          + (f"; gRPC: {endpoints.grpc}" if endpoints.grpc else ""), flush=True)
    stopped = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopped.set())
    stopped.wait()
    stop()
    return 0


def _cmd_client_status(args: argparse.Namespace, config: FedpragConfig) -> int:
    import grpc

    from fedprag.client.admin import daemon_status, running_daemon, status_fields

    data_dir = args.data_dir or config.site.data_dir
    if not data_dir or not Path(data_dir).is_dir():
        raise FileNotFoundError(f"{data_dir or '(no data_dir given)'}: no site store here")
    if running_daemon(data_dir) is not None:
        try:
            status = daemon_status(data_dir)
            print(json.dumps({"daemon": "running", **status_fields(status)}, indent=2))
            return 0
        except grpc.RpcError as exc:
            print(f"fedprag: the daemon of {data_dir} did not answer ({exc.code().name}); "
                  "showing the store", file=sys.stderr)
    from fedprag.client.store import SiteStore  # torch comes with the store: not needed to ask a daemon

    store = SiteStore(data_dir)
    state = store.state
    print(json.dumps({"daemon": "not running", "site": state.site_id, "passages": len(store.passages()),
                      "rounds_joined": state.rounds_joined, "pool_version": state.pool_version}, indent=2))
    return 0


def _common_options(parser: argparse.ArgumentParser, default: object = None) -> None:
    """Options every command takes, before or after the command name."""
    suppress = default is argparse.SUPPRESS
    parser.add_argument("--config", metavar="FILE", default=default, help="TOML configuration file")
    parser.add_argument("--set", metavar="SECTION.FIELD=VALUE", action="append",
                        default=argparse.SUPPRESS if suppress else [],
                        help="override one configuration field (repeatable)")
    parser.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS if suppress else False,
                        help="no progress bars")


def _model_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", dest="model.path", help="'tiny', 'tiny:<recipe>' or a local HF checkpoint")


def _federation_options(parser: argparse.ArgumentParser) -> None:
    _model_option(parser)
    parser.add_argument("--rounds", type=int, dest="federation.rounds", help="total rounds (completed ones are kept)")
    parser.add_argument("--mode", dest="federation.mode", choices=("poly", "distilled"),
                        help="poly (default): sites train a shared expert pool and route with private rows; "
                             "distilled: sites distil a shared generator that turns documents into LoRA weights")
    parser.add_argument("--strategy", dest="federation.strategy", help="expert_mass (default) or fedavg")
    parser.add_argument("--runtime", dest="federation.runtime", choices=("deployment", "simulation"),
                        help="deployment (default): SuperLink + one SuperNode process per site, TLS and node "
                             "auth, on loopback; simulation: sites as Ray actors in one process")
    parser.add_argument("--ray-address", dest="federation.ray_address",
                        help="simulation runtime: the Ray cluster to run the sites on (host:port, or auto); "
                             "default: a Ray of its own, started for the run")
    parser.add_argument("--work-dir", dest="federation.work_dir",
                        help="holds sites/ (site stores), registry/ (pool versions) and results")


def _model_commands(groups: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """fedprag model: build the built-in model and DistilledPRAG's pretrained generator."""
    model = groups.add_parser("model", help="the built-in base models and DistilledPRAG's pretrained generator")
    model = model.add_subparsers(dest="command", required=True)
    build = model.add_parser("build-tiny", parents=[common],
                             help="rebuild a built-in model from its recipe (the default ships with fedprag)")
    build.add_argument("--recipe", default="default", choices=list(RECIPES),
                       help="default: about 110 min on 2 cores from nothing (the reader, about 18 min, then four "
                            "finishing stages, each cached: drilled, polished, annealed, default); small: a "
                            "6-minute model for the integration tests; short: its first 40 steps. Builds are "
                            "cached under $FEDPRAG_HOME/models and compared, bit for bit, with the shipped copy: "
                            "small and short give its bytes on any x86-64 CPU with AVX2, the default model only "
                            "on the CPU family it was built on")
    build.add_argument("--ship", action="store_true",
                       help="for maintainers: copy the built model into the package's shipped models, with its "
                            "SHA256SUMS")
    build.set_defaults(handler=_cmd_build_tiny)
    generator = model.add_parser(
        "build-generator", parents=[common],
        help="distil DistilledPRAG's generator for a base model on synthetic documents (cached under "
             "$FEDPRAG_HOME/generators; the built-in default model's, at the default [distilled] settings, ships)",
        description="Distil the generator that federated distillation starts from (distilled.start = "
                    "'pretrained'), ahead of a federation: about 13 minutes on 2 cores for the built-in default "
                    "model at distilled.steps = 2400. A generator that is shipped or cached is loaded, not trained.")
    _model_option(generator)
    generator.add_argument("--ship", action="store_true",
                           help="for maintainers: copy the generator into the package's shipped generators")
    generator.set_defaults(handler=_cmd_build_generator)


def _data_commands(groups: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """fedprag data: write and check datasets."""
    data = groups.add_parser("data", help="datasets").add_subparsers(dest="command", required=True)
    make = data.add_parser("make", parents=[common], help="write the knowledge benchmark (Parquet)")
    make.add_argument("--out", required=True, help="output dataset directory")
    make.add_argument("--people", type=int, dest="benchmark.people", help="fictional people (one passage each)")
    make.add_argument("--sites", type=int, dest="benchmark.sites", help="number of data-owner sites")
    make.add_argument("--alpha", type=float, dest="benchmark.alpha", help="Dirichlet concentration of the site split")
    make.add_argument("--seed", type=int, dest="benchmark.seed", help="random seed")
    make.set_defaults(handler=_cmd_data_make)
    validate = data.add_parser("validate", parents=[common], help="check a dataset directory against the schema")
    validate.add_argument("dir", help="dataset directory")
    validate.set_defaults(handler=_cmd_data_validate)


def _run_commands(groups: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """fedprag eval, demo and federate: the jobs that train and compare."""
    ev = groups.add_parser("eval", parents=[common], help="compare methods on one dataset; prints the results table")
    ev.add_argument("--data", dest="eval.data", help="dataset directory (default: generate the benchmark)")
    _model_option(ev)
    ev.add_argument("--methods", dest="eval.methods", help="comma-separated method names")
    ev.add_argument("--out", dest="eval.out", help="output directory for results (default runs/eval)")
    ev.set_defaults(handler=_cmd_eval)

    demo = groups.add_parser("demo", parents=[common],
                             help="the main job: a federation of sites on this machine, then the results table")
    _federation_options(demo)
    demo.add_argument("--people", type=int, dest="benchmark.people", help="benchmark size (one passage per person)")
    demo.add_argument("--sites", type=int, dest="benchmark.sites", help="data-owner sites (Dirichlet split)")
    demo.set_defaults(handler=_cmd_demo)

    federate = groups.add_parser("federate", parents=[common],
                                 help="run (or resume) federated rounds over the site stores in WORK_DIR/sites")
    _federation_options(federate)
    federate.add_argument("--min-sites", type=int, dest="federation.min_sites", help="valid updates a round needs")
    federate.add_argument("--local-epochs", type=int, dest="federation.local_epochs", help="epochs per site per round")
    federate.add_argument("--coordinator", metavar="HOST:PORT",
                          help="run the campaign on a running coordinator (fedprag coordinator run) instead: its "
                               "rounds up to --rounds in total, then the release, with the coordinator's settings")
    federate.add_argument("--ca", dest="coordinator.ca_cert", metavar="FILE", help="with --coordinator: the federation's CA certificate")
    federate.set_defaults(handler=_cmd_federate)


def _coordinator_command(groups: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """fedprag coordinator: the operator's coordinator, on Ray."""
    coordinator = groups.add_parser("coordinator", help="the operator's coordinator (SuperLink, site admission, "
                                                        "campaigns) on Ray").add_subparsers(dest="command", required=True)
    run = coordinator.add_parser(
        "run", parents=[common], help="start the coordinator as an actor on Ray and hold it until SIGTERM",
        description="Start the coordinator as a long-lived actor on the Ray cluster (coordinator.ray_address; "
                    "default: a Ray of its own): the SuperLink with TLS and SuperNode authentication on "
                    "coordinator.host:port, the sites whose public keys are in coordinator.keys_dir admitted (a key "
                    "removed is refused), and campaigns (federation.rounds more rounds, then the release) every "
                    "coordinator.campaign_every_s or on request (fedprag federate --coordinator). Rounds publish to "
                    "<federation.work_dir>/registry, where the query API picks up each new version. SIGTERM stops "
                    "the actor and every process it started. Configure it in the [coordinator] section of --config.")
    run.add_argument("--ray-address", dest="coordinator.ray_address", metavar="ADDRESS",
                     help="the Ray cluster to run on (host:port, or auto); default: a Ray of its own")
    run.add_argument("--keys-dir", dest="coordinator.keys_dir", metavar="DIR", help="the admitted sites' public keys (<site>.pub)")
    run.set_defaults(handler=_cmd_coordinator_run)


def _certs_command(groups: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """fedprag certs: a federation's TLS material and SuperNode keys."""
    certs = groups.add_parser("certs", parents=[common], help="write a local CA, a SuperLink certificate and SuperNode auth keys")
    certs.add_argument("--out", required=True, help="output folder (private keys get mode 0600)")
    certs.add_argument("--node", action="append", default=[], metavar="NAME",
                       help="also write the auth key pair of SuperNode NAME (repeatable)")
    certs.add_argument("--routing", action="append", default=[], metavar="SITE",
                       help="also write a site daemon's routing-service certificate, signed by the same CA (repeatable)")
    certs.add_argument("--host", action="append", default=[], metavar="NAME",
                       help="extra host name or IP for the certificates (loopback is always included)")
    certs.add_argument("--days", type=int, default=30, help="validity in days (default 30)")
    certs.set_defaults(handler=_cmd_certs)


def _client_commands(groups: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """fedprag client: the data owner's store and daemon."""
    client = groups.add_parser("client", help="the data-owner daemon's site store").add_subparsers(dest="command", required=True)
    from fedprag.shared.data.schema import MAX_PASSAGE_CHARS  # the dataset limit, also ingest's chunk size

    ingest = client.add_parser(
        "ingest", parents=[common], help="add passages (idempotent, all or nothing; text never leaves the site)",
        description="Add passages to a site store. Every source is checked first; a bad row (not UTF-8, not "
                    "readable Parquet, a null/empty/non-string text, an id that is null, a float or a list, an id "
                    "given again with other text) stops the ingest with one error naming file and row, and "
                    f"nothing is stored. A passage over {MAX_PASSAGE_CHARS:,} characters is split at sentence "
                    "(else whitespace) boundaries into chunks of at most that many characters, stored as "
                    "<id>#1, <id>#2, ... (deterministic, so re-ingesting stays idempotent).")
    ingest.add_argument("data_dir", help="the site's data directory")
    ingest.add_argument("sources", nargs="+",
                        help=".jsonl ({'id', 'text'[, 'qa', 'rewrite']}; id a string or integer, optional), .parquet "
                             "(text[, passage_id or id]), a .txt file or a folder of .txt files (UTF-8); passages "
                             f"over {MAX_PASSAGE_CHARS:,} characters become <id>#1, <id>#2, ...")
    ingest.add_argument("--site-id", help="the site's opaque id (first ingest only)")
    ingest.set_defaults(handler=_cmd_client_ingest)
    status = client.add_parser("status", parents=[common],
                               help="passages (encoded, pending), rounds joined, pool version, queries served",
                               description="Ask the site's running daemon for its status over its local socket; "
                                           "without a daemon, show what the store holds.")
    status.add_argument("data_dir", nargs="?", help="the site's data directory (default: site.data_dir)")
    status.set_defaults(handler=_cmd_client_status)
    run = client.add_parser(
        "run", parents=[common], help="the site daemon: join rounds, serve routing over gRPC, encode inbox documents",
        description="Run the data owner's daemon until SIGTERM: it keeps a SuperNode connected to the coordinator "
                    "(site.superlink), serves the site's routing service over gRPC with TLS and caller tokens "
                    "(site.routing_*), and ingests and encodes at once every document moved into the inbox "
                    "(site.inbox, default <data_dir>/inbox). Configure it in the [site] section of --config.")
    run.add_argument("--data-dir", dest="site.data_dir", help="the site's data directory")
    run.add_argument("--superlink", dest="site.superlink", help="host:port of the coordinator's SuperLink")
    run.add_argument("--routing-address", dest="site.routing_address", help="host:port the routing service listens on")
    _model_option(run)
    run.set_defaults(handler=_cmd_client_run)


def _export_command(groups: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """fedprag export: an encoded passage as a PEFT adapter."""
    export = groups.add_parser(
        "export", parents=[common], help="one passage's encoding as a PEFT adapter directory (at its site)",
        description="Write the released pool with one passage's routing (its top-m experts, as the site answers "
                    "when the passage is a query's only hit) as a PEFT LoRA adapter: PeftModel.from_pretrained("
                    "base_model, OUT) answers as fedprag does. Runs at the site that holds the passage, on its "
                    "store; nothing leaves it. Poly-PRAG only (federation.mode = poly).")
    export.add_argument("data_dir", help="the site's data directory")
    export.add_argument("passage_id", help="the passage to export (an encoded one)")
    export.add_argument("--out", required=True, help="the adapter directory to write")
    export.add_argument("--mode", dest="federation.mode", choices=("poly", "distilled"),
                        help="the federation's mode (default poly)")
    _model_option(export)
    export.set_defaults(handler=_cmd_export)


def _serve_command(groups: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """fedprag serve: the query API on Ray Serve."""
    serve = groups.add_parser(
        "serve", parents=[common], help="the query API and the serving actor group on Ray Serve (HTTP and gRPC)",
        description="Start the query API (POST /v1/query, OpenAI-compatible /v1/chat/completions, /v1/completions, "
                    "/v1/models; /healthz, /metrics, /docs; gRPC FedpragQuery.Ask) and the replicas on Ray "
                    "Serve, and serve until SIGTERM. Questions are routed by fanning out to the site daemons "
                    "(serve.sites, with serve.ca_cert and serve.site_token_file) or by the federation's learned "
                    "router; answers come from the newest pool in the registry (serve.registry). API keys: "
                    "FEDPRAG__SERVE__API_KEYS=key1,key2. Configure it in the [serve] section of --config.")
    serve.add_argument("--address", default=None,
                       help="an existing Ray cluster (ray://host:10001 or host:6379); default: start a local Ray")
    serve.add_argument("--deploy-config", metavar="CLUSTER_PATH",
                       help="print the Ray Serve deploy config (KubeRay's serveConfigV2) for a cluster where this "
                            "configuration file lies at CLUSTER_PATH, and exit (deploy/k8s is made with it)")
    serve.add_argument("--port", dest="serve.port", help="HTTP port (default 8000)")
    serve.add_argument("--grpc-port", dest="serve.grpc_port", help="gRPC port (default 0: none; plaintext, so it needs serve.plaintext)")
    serve.add_argument("--registry", dest="serve.registry", help="the coordinator's pool registry directory")
    serve.add_argument("--replicas", dest="serve.replicas", help="serving replicas that route and answer (default 1)")
    _model_option(serve)
    serve.set_defaults(handler=_cmd_serve)


def build_parser() -> argparse.ArgumentParser:
    """The ``fedprag`` parser: the shared options, then each command group's subcommands."""
    parser = argparse.ArgumentParser(prog="fedprag", description="Federated parametric RAG.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    _common_options(parser)
    common = argparse.ArgumentParser(add_help=False)
    _common_options(common, argparse.SUPPRESS)
    groups = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")
    for add in (_model_commands, _data_commands, _run_commands, _coordinator_command, _certs_command, _client_commands,
                _export_command, _serve_command):
        add(groups, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, load the configuration, run the command; errors exit 2 with a message."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quiet:
        # Bars created from here on take show_progress=False; the environment variables reach the
        # processes we start (a Ray we start imports tqdm afresh in its workers; a running cluster's
        # workers keep their own), and transformers, imported later by the command, reads the hub's switch.
        os.environ["TQDM_DISABLE"] = "1"
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    log.configure()
    overrides = {k: v for k, v in vars(args).items() if "." in k and v is not None}
    try:
        overrides.update(_set_pairs(args.set))
        config = load_config(args.config, overrides)
        return args.handler(args, config)
    except (ConfigError, DatasetError, ModelLoadError, FileNotFoundError) as exc:
        print(f"fedprag: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
