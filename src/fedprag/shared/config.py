"""fedprag's one typed configuration: defaults ← TOML file ← environment ← command line.

Every section is a frozen dataclass owned by the code it configures. Values from the TOML file,
from ``FEDPRAG__<SECTION>__<FIELD>`` environment variables and from ``--set section.field=value``
flags are coerced to the field's type and validated at start; every error names the field.

Example ``fedprag.toml``::

    [model]
    path = "tiny"            # or a local Hugging Face checkpoint directory

    [benchmark]
    people = 60
    sites = 6

    [prag]
    epochs = 2
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w

from fedprag.shared.data.benchmark import BenchmarkSpec
from fedprag.shared.eval.config import HarnessConfig
from fedprag.shared.methods import REGISTRY
from fedprag.shared.methods.config import MethodConfig
from fedprag.shared.methods.distilled.config import DistilledConfig
from fedprag.shared.methods.poly.config import PolyConfig
from fedprag.shared.methods.prag.config import PRAGConfig
from fedprag.shared.models.augment_config import AugmentConfig
from fedprag.shared.retrieval import DTYPES as ENCODER_DTYPES

ENV_PREFIX = "FEDPRAG__"
CONFIG_ENV = "FEDPRAG_CONFIG"
"""Names the coordinator's TOML file to the ServerApp where a campaign's run config names none."""


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type, or out of range."""


@dataclass(frozen=True)
class ModelSection:
    path: str = "tiny"
    """``tiny``, ``tiny:<recipe>`` or a local Hugging Face causal-LM checkpoint directory."""


@dataclass(frozen=True)
class EvalSection:
    methods: tuple[str, ...] = ("closed_book", "standard_rag", "standard_rag_top1", "prag", "prag_combine", "poly",
                                "poly_uniform", "poly_incremental", "poly_router")
    data: str = ""
    """A dataset directory; empty means the default benchmark, generated on first use."""
    out: str = "runs/eval"


@dataclass(frozen=True)
class FederationSection:
    """Federated rounds: how many, over how many sites, aggregated how, checkpointed where."""

    mode: str = "poly"
    """What the sites train and serve with: ``poly`` (Poly-PRAG: a shared expert pool, private
    routing rows) or ``distilled`` (DistilledPRAG: a shared generator that turns each query's
    documents into LoRA weights at the site that holds them)."""
    rounds: int = 10
    min_sites: int = 2
    """A round completes with at least this many valid updates; dropped sites are tolerated."""
    strategy: str = "expert_mass"
    """``expert_mass`` (weight expert k by each site's routing mass) or ``fedavg``."""
    local_epochs: int = 8
    home_experts: int = 3
    """Experts the coordinator gives each site as its home block: the site's new passages start
    routed there, so sites store their facts in different experts (0 = no home blocks)."""
    runtime: str = "deployment"
    """``deployment``: a SuperLink and one SuperNode per site as processes, with TLS and node
    authentication; ``simulation``: every site as a Ray actor in one process (many sites)."""
    ray_address: str = ""
    """Simulation runtime: the Ray cluster whose actors run the sites (``host:port``, or ``auto``
    for the one this machine belongs to); empty: a Ray of its own, started for the run."""
    round_timeout: float = 900.0
    dp_noise_multiplier: float = 0.0
    """Central differential privacy: Gaussian noise σ (0 = off); each site's change is clipped to ``dp_clip``."""
    dp_clip: float = 1.0
    dp_delta: float = 1e-5
    work_dir: str = "runs/federation"
    """Holds ``sites/site-<i>`` (the sites' stores, in the demo) and ``registry/`` (pool versions)."""

    def validate(self) -> None:
        for name in ("rounds", "min_sites", "local_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"federation.{name}: must be a positive integer")
        if self.home_experts < 0:
            raise ValueError("federation.home_experts: must be zero or more")
        if self.mode not in ("poly", "distilled"):
            raise ValueError(f"federation.mode: must be 'poly' or 'distilled', not '{self.mode}'")
        if self.strategy not in ("expert_mass", "fedavg"):
            raise ValueError(f"federation.strategy: must be 'expert_mass' or 'fedavg', not '{self.strategy}'")
        if self.runtime not in ("deployment", "simulation"):
            raise ValueError(f"federation.runtime: must be 'deployment' or 'simulation', not '{self.runtime}'")
        if self.ray_address and self.runtime != "simulation":
            raise ValueError("federation.ray_address: only the simulation runtime runs its sites on Ray")
        if self.round_timeout <= 0:
            raise ValueError("federation.round_timeout: must be positive")
        if self.dp_noise_multiplier < 0 or self.dp_clip <= 0 or not 0 < self.dp_delta < 1:
            raise ValueError("federation.dp_noise_multiplier must be ≥ 0, dp_clip > 0 and dp_delta in (0, 1)")


@dataclass(frozen=True)
class SiteSection:
    """A data owner's daemon (``fedprag client run``): its store, its coordinator and its routing endpoint.

    Example ``site.toml``::

        [model]
        path = "tiny"

        [site]
        data_dir = "/srv/fedprag/site-a"
        superlink = "coordinator.example.org:9092"
        ca_cert = "/srv/fedprag/certs/ca.crt"
        auth_key = "/srv/fedprag/certs/nodes/site-a"
        routing_address = "0.0.0.0:7070"
        routing_cert = "/srv/fedprag/certs/site-a-routing.pem"
        routing_key = "/srv/fedprag/certs/site-a-routing.key"
        tokens_file = "/srv/fedprag/routing-tokens"
    """

    data_dir: str = ""
    """The site's data directory (passages, routing rows, the released pool). Required."""
    site_id: str = ""
    """The site's opaque id, used on its first start only (default: a hash of the data directory)."""
    superlink: str = ""
    """``host:port`` of the coordinator's SuperLink; empty: serve routing only, join no rounds."""
    ca_cert: str = ""
    """The federation's CA certificate (verifies the SuperLink; signed the routing certificate)."""
    auth_key: str = ""
    """This site's SuperNode authentication private key (its public key is registered with the SuperLink)."""
    routing_address: str = "127.0.0.1:7070"
    """Where the routing service listens (``host:port``; port 0 picks a free one)."""
    routing_cert: str = ""
    routing_key: str = ""
    """The routing service's TLS certificate and key."""
    tokens_file: str = ""
    """Bearer tokens accepted from callers of the routing service, one per line (``#`` comments)."""
    inbox: str = ""
    """Folder watched for new documents (default ``<data_dir>/inbox``)."""
    rate_limit_qps: float = 500.0
    rate_limit_burst: int = 2000
    """Queries each caller token may ask the routing service: this many at once, refilled at rate_limit_qps."""
    reply_noise: float = 0.0
    """Gaussian noise σ on every routing reply's scores and mixture (0 = exact replies)."""
    factor_noise: float = 0.0
    """Distilled mode: Gaussian noise on the LoRA factors a reply carries, relative to each column's
    norm (``fedprag.shared.methods.distilled.layers.protect``). 0 sends them as generated; on the
    built-in model noise 3 roughly halves what an attacker decodes from them and costs about 0.3 exact match."""
    poll_seconds: float = 1.0
    threads: int = 1
    """torch and faiss threads for the site's training, encoding and searches."""

    def validate(self) -> None:
        if self.poll_seconds <= 0:
            raise ValueError("site.poll_seconds: must be positive")
        if self.threads < 1:
            raise ValueError("site.threads: must be a positive integer")
        if self.rate_limit_qps <= 0 or self.rate_limit_burst < 256:
            raise ValueError("site.rate_limit_qps must be positive and site.rate_limit_burst at least 256 "
                             "(the most queries one routing request may carry)")
        if self.factor_noise < 0:
            raise ValueError("site.factor_noise: must be zero or positive")
        if self.reply_noise < 0:
            raise ValueError("site.reply_noise: must be zero or positive")
        host, _, port = self.routing_address.rpartition(":")
        if not host or not port.isdigit() or int(port) > 65535:
            raise ValueError(f"site.routing_address: expected host:port, got '{self.routing_address}'")

    def check_files(self) -> None:
        """What ``fedprag client run`` needs before it starts; each missing piece is named."""
        if not self.data_dir:
            raise ValueError("site.data_dir: required (the site's data directory)")
        needed = ["routing_cert", "routing_key", "tokens_file"]
        if self.superlink:
            needed += ["ca_cert", "auth_key"]
        for name in needed:
            value = getattr(self, name)
            if not value:
                raise ValueError(f"site.{name}: required" + (" when site.superlink is set" if name in
                                                               ("ca_cert", "auth_key") else ""))
            if not Path(value).is_file():
                raise ValueError(f"site.{name}: no such file: {value}")


@dataclass(frozen=True)
class ServeSection:
    """The query API and the serving actor group (``fedprag serve``).

    Example ``serve.toml``::

        [serve]
        registry = "/srv/fedprag/registry"
        sites = ["site-a=site-a.example.org:7070", "site-b=site-b.example.org:7070"]
        ca_cert = "/srv/fedprag/certs/ca.crt"
        site_token_file = "/srv/fedprag/query-api-token"
        replicas = 2
        # API keys come from FEDPRAG__SERVE__API_KEYS="key1,key2" rather than a file in version control.
    """

    host: str = "127.0.0.1"
    """Where the query API listens. Outside loopback it serves HTTPS (``tls_cert``, ``tls_key``) unless ``plaintext``."""
    port: int = 8000
    """The HTTP port of the query API (Ray Serve's proxy)."""
    tls_cert: str = ""
    """The query API's TLS certificate (PEM, chain included); with ``tls_key``, the HTTP port speaks HTTPS."""
    tls_key: str = ""
    plaintext: bool = False
    """Accept plaintext listeners: HTTP on a non-loopback ``host`` without ``tls_cert``, and the gRPC
    port (for a private network, or behind a TLS-terminating proxy)."""
    grpc_port: int = 0
    """The gRPC port of the query service (0 = no gRPC). Ray Serve's gRPC proxy has no TLS and listens
    on every interface whatever ``host`` says, so a gRPC port needs ``plaintext``."""
    registry: str = ""
    """The coordinator's pool registry (default ``<federation.work_dir>/registry``)."""
    sites: tuple[str, ...] = ()
    """The site daemons' routing services, each ``name=host:port``."""
    ca_cert: str = ""
    """The federation's CA certificate, which signed the sites' routing certificates."""
    site_token_file: str = ""
    """The bearer token the query API presents to the sites (first line of the file)."""
    site_deadline: float = 2.0
    """Seconds a site may take to answer a routing request before it is skipped."""
    routing: str = "fanout"
    """Default routing: ``fanout`` (ask every site) or ``router`` (the learned central router)."""
    top_k: int = 3
    replicas: int = 1
    """Generator replicas; with ``max_replicas`` above it, Ray Serve autoscales between ``min_replicas`` and that."""
    min_replicas: int = 1
    max_replicas: int = 0
    """0 = a fixed number of replicas (``replicas``)."""
    target_ongoing_requests: int = 16
    """Autoscaling: requests in flight per replica that Ray Serve scales towards."""
    upscale_delay_s: float = 30.0
    """Autoscaling: seconds the load must stay above the target before a replica is added."""
    look_back_period_s: float = 30.0
    """Autoscaling: the seconds of load Ray Serve averages over before it decides."""
    replica_cpus: float = 1.0
    """CPUs Ray reserves for each replica."""
    max_batch_size: int = 32
    batch_wait_ms: float = 2.0
    """How long an idle replica waits to fill a batch before routing and answering it (a lone request
    pays this wait)."""
    busy_batch_wait_ms: float = 20.0
    """The wait while a replica is busy (its last batch held more than one request): under load a
    longer wait gathers bigger batches, and a batch costs little more than one request."""
    encoder_dtype: str = "auto"
    """Precision of the replicas' question encoder: ``auto`` (bfloat16 on a CPU with native bfloat16,
    such as AMX or AVX512-BF16, else float32), ``float32`` or ``bfloat16``. Sites index in float32."""
    max_new_tokens: int = 12
    api_keys: tuple[str, ...] = ()
    """Bearer tokens accepted by the query API. Required."""
    rate_limit_qps: float = 50.0
    rate_limit_burst: int = 100
    """Requests each API key may make: this many at once, refilled at rate_limit_qps."""
    key_rate_limits: tuple[str, ...] = ()
    """Keys with a rate of their own, each ``<key>=<requests per second>`` (burst: twice the rate)."""

    def validate(self) -> None:
        for name in ("port", "top_k", "replicas", "min_replicas", "max_batch_size", "max_new_tokens", "rate_limit_burst",
                     "target_ongoing_requests"):
            if getattr(self, name) < 1:
                raise ValueError(f"serve.{name}: must be a positive integer")
        if not 0 <= self.grpc_port <= 65535 or self.port > 65535:
            raise ValueError("serve.port and serve.grpc_port: must be ports (grpc_port 0 = no gRPC)")
        if self.routing not in ("fanout", "router"):
            raise ValueError(f"serve.routing: must be 'fanout' or 'router', not '{self.routing}'")
        if self.max_replicas and not self.min_replicas <= self.replicas <= self.max_replicas:
            raise ValueError("serve.replicas: must lie between serve.min_replicas and serve.max_replicas")
        if self.encoder_dtype not in ENCODER_DTYPES:
            raise ValueError(f"serve.encoder_dtype: must be one of {ENCODER_DTYPES}, not '{self.encoder_dtype}'")
        for name in ("site_deadline", "replica_cpus", "batch_wait_ms", "busy_batch_wait_ms", "rate_limit_qps",
                     "upscale_delay_s", "look_back_period_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"serve.{name}: must be positive")
        for key, rate in self.key_rates().items():
            if key not in self.api_keys or not rate > 0:
                raise ValueError("serve.key_rate_limits: each entry is <one of serve.api_keys>=<positive rate>")
        for entry in self.sites:
            name, sep, address = entry.partition("=")
            if not sep or not name or not address.rpartition(":")[2].isdigit():
                raise ValueError(f"serve.sites: expected name=host:port, got '{entry}'")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("serve.tls_cert and serve.tls_key: give both, or neither")
        if not self.tls_cert and not self.plaintext and not _is_loopback(self.host):
            raise ValueError(f"serve.tls_cert: required to serve on {self.host}, beyond loopback "
                             "(or serve.plaintext = true behind a TLS-terminating proxy)")
        if self.grpc_port and not self.plaintext:
            raise ValueError("serve.grpc_port: the gRPC port speaks plaintext on every interface (Ray Serve's gRPC "
                             "proxy has no TLS); set serve.plaintext = true to serve it anyway, or 0 for no gRPC")

    def key_rates(self) -> dict[str, float]:
        """``{API key: requests per second}`` for keys with a rate of their own."""
        rates = {}
        for entry in self.key_rate_limits:
            key, _, rate = entry.rpartition("=")
            try:
                rates[key] = float(rate)
            except ValueError:
                rates[key] = 0.0
        return rates

    def site_addresses(self) -> dict[str, str]:
        """``{site name: host:port}``."""
        return dict(entry.split("=", 1) for entry in self.sites)

    def check_files(self) -> None:
        """What ``fedprag serve`` needs before it starts; each missing piece is named."""
        if not self.api_keys:
            raise ValueError("serve.api_keys: at least one API key is required (FEDPRAG__SERVE__API_KEYS=key1,key2)")
        for name in ("tls_cert", "tls_key"):
            value = getattr(self, name)
            if value and not Path(value).is_file():
                raise ValueError(f"serve.{name}: must be a file (got '{value}')")
        if self.sites:
            for name in ("ca_cert", "site_token_file"):
                value = getattr(self, name)
                if not value or not Path(value).is_file():
                    raise ValueError(f"serve.{name}: required with serve.sites, and must be a file (got '{value}')")


@dataclass(frozen=True)
class CoordinatorSection:
    """The operator's coordinator (``fedprag coordinator run``): the SuperLink the sites dial, which
    sites it admits, and when it runs campaigns. The rounds themselves follow ``[federation]``, and
    the registry is ``<federation.work_dir>/registry``.

    Example ``coordinator.toml``::

        [coordinator]
        host = "0.0.0.0"
        port = 9092
        ca_cert = "/etc/fedprag/tls/ca.crt"
        tls_cert = "/etc/fedprag/tls/superlink.pem"
        tls_key = "/etc/fedprag/tls/superlink.key"
        keys_dir = "/etc/fedprag/site-keys"
        campaign_every_s = 86400

        [federation]
        rounds = 10
        work_dir = "/var/lib/fedprag"
    """

    host: str = "127.0.0.1"
    """Where the SuperLink listens: the sites' Fleet API and the operators' Control API, one HTTPS port."""
    port: int = 9092
    ca_cert: str = ""
    """The federation's CA certificate, which signed ``tls_cert``; operators' ``flwr`` verifies with it."""
    tls_cert: str = ""
    tls_key: str = ""
    """The SuperLink's certificate (naming the address the sites dial) and its key. Required."""
    keys_dir: str = ""
    """The admitted sites' SuperNode public keys, one ``<site>.pub`` each. A key added is admitted and
    a key removed is refused within ``admit_every_s``. Required."""
    admit_every_s: float = 5.0
    campaign_every_s: float = 0.0
    """Run a campaign (the rounds still to do up to ``federation.rounds``, then the release) this often;
    0: only when an operator asks (``fedprag federate --coordinator HOST:PORT``)."""
    ray_address: str = ""
    """The Ray cluster the coordinator runs on (``host:port``, or ``auto``); empty: a Ray of its own."""

    def validate(self) -> None:
        if not 0 < self.port <= 65535:
            raise ValueError(f"coordinator.port: must be a port, not {self.port}")
        if self.admit_every_s <= 0:
            raise ValueError("coordinator.admit_every_s: must be positive")
        if self.campaign_every_s < 0:
            raise ValueError("coordinator.campaign_every_s: must be zero (on request only) or positive")

    def check_files(self) -> None:
        """What ``fedprag coordinator run`` needs before it starts; each missing piece is named."""
        for name in ("ca_cert", "tls_cert", "tls_key"):
            value = getattr(self, name)
            if not value or not Path(value).is_file():
                raise ValueError(f"coordinator.{name}: required, and must be a file (got '{value}')")
        if not self.keys_dir or not Path(self.keys_dir).is_dir():
            raise ValueError(f"coordinator.keys_dir: required, and must be a folder (got '{self.keys_dir}')")


def _is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (``localhost``, 127.0.0.0/8, ``::1``)."""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class FedpragConfig:
    model: ModelSection = field(default_factory=ModelSection)
    benchmark: BenchmarkSpec = field(default_factory=BenchmarkSpec)
    prag: PRAGConfig = field(default_factory=PRAGConfig)
    poly: PolyConfig = field(default_factory=PolyConfig)
    distilled: DistilledConfig = field(default_factory=DistilledConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    eval: EvalSection = field(default_factory=EvalSection)
    harness: HarnessConfig = field(default_factory=HarnessConfig)
    federation: FederationSection = field(default_factory=FederationSection)
    site: SiteSection = field(default_factory=SiteSection)
    serve: ServeSection = field(default_factory=ServeSection)
    coordinator: CoordinatorSection = field(default_factory=CoordinatorSection)

    def method_configs(self) -> dict[str, MethodConfig]:
        """Every registered method's configuration section, by method name."""
        return {name: getattr(self, name) for name in REGISTRY}

    def validate(self) -> None:
        try:
            self.benchmark.validate()
            self.prag.validate()
            self.poly.validate()
            self.distilled.validate()
            self.augment.validate()
            self.harness.validate()
            self.federation.validate()
            self.site.validate()
            self.serve.validate()
            self.coordinator.validate()
        except ValueError as exc:
            raise ConfigError(str(exc)) from None


def _coerce(value: object, kind: object, where: str) -> object:
    origin = typing.get_origin(kind)
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(v.strip() if isinstance(v, str) else v, typing.get_args(kind)[0], where) for v in items)
    try:
        if kind is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        if kind in (int, float, str):
            return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected {getattr(kind, '__name__', kind)}, got {value!r}") from None
    raise ConfigError(f"{where}: unsupported type {kind}")


def _apply(section: object, values: Mapping[str, object], where: str) -> object:
    hints = typing.get_type_hints(type(section))
    changes = {}
    for key, value in values.items():
        if key not in hints:
            known = ", ".join(f.name for f in dataclasses.fields(section))
            raise ConfigError(f"{where}{key}: unknown field (known: {known})")
        current = getattr(section, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{where}{key}: expected a table")
            changes[key] = _apply(current, value, f"{where}{key}.")
        else:
            changes[key] = _coerce(value, hints[key], f"{where}{key}")
    return dataclasses.replace(section, **changes)


def _nest(dotted: Mapping[str, object]) -> dict[str, object]:
    tree: dict[str, object] = {}
    for key, value in dotted.items():
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})  # type: ignore[assignment]
        node[leaf] = value
    return tree


def _merge(base: dict, extra: Mapping) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out.get(key, {}), value) if isinstance(value, Mapping) else value
    return out


def load_config(path: str | Path | None = None, overrides: Mapping[str, object] | None = None,
                environ: Mapping[str, str] | None = None) -> FedpragConfig:
    """Build and validate the configuration.

    ``overrides`` maps dotted names (``prag.epochs``) to values, as given on the command line.
    """
    layers: dict[str, object] = {}
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"config file {file} not found")
        try:
            layers = tomllib.loads(file.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {file}: {exc}") from None
    env = environ if environ is not None else os.environ
    from_env = {k[len(ENV_PREFIX):].lower().replace("__", "."): v for k, v in env.items() if k.startswith(ENV_PREFIX)}
    layers = _merge(_merge(layers, _nest(from_env)), _nest(overrides or {}))
    config = _apply(FedpragConfig(), layers, "")
    config.validate()
    return config  # type: ignore[return-value]


def config_to_toml(config: FedpragConfig) -> str:
    """The whole configuration as TOML that :func:`load_config` reads back to an equal config.

    A launcher writes it for processes it starts elsewhere (a deployed ServerApp), so they run
    with exactly the settings the operator validated.
    """
    return tomli_w.dumps(dataclasses.asdict(config))
