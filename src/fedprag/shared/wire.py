"""The wire schema: every message that crosses a site boundary, and nothing else.

A message is a frozen dataclass whose every field has one of five kinds, declared in its
metadata: ``count`` (a non-negative int), ``score`` (a finite float), ``id`` (an opaque
identifier: at most 64 characters from ``[A-Za-z0-9_.:-]``), ``tensors`` (a mapping from id to
a finite floating-point array) or ``scores`` (a mapping from id to score). There is no free-text
kind, so passage text cannot be put on the wire by mistake: encoding refuses any value that is
not of its field's kind, and decoding refuses any record with a key or a value the schema does
not declare.

Messages travel as Flower ``RecordDict``s between coordinator and sites (tensors as
``ArrayRecord``s, counts and scores as a ``MetricRecord``, ids as a ``ConfigRecord`` holding only
validated ids), and as ``WireRecord`` protobufs (``shared/proto/routing.proto``) between the
query API and a site's routing service: the same fields by kind, tensors as little-endian float32.

What crosses, field by field:

* :class:`RoundTask`, coordinator → site: ``round`` and ``version`` (counts); ``experts``
  (the pool's factors, ``<module>.lora_A [K, r, in]`` and ``<module>.lora_B [K, out, r]``);
  ``settings`` (the round's training settings as numbers, keyed by setting name).
* :class:`SiteUpdate`, site → coordinator: ``site`` (the site's id); ``round``, ``version``,
  ``passages`` and ``sequences`` (counts of the site's passages and training sequences); ``loss``
  (its mean training loss); ``experts`` (its trained copy of the pool, same shapes); ``mass``
  (``routing_mass [G, K]``, the sum of its passages' expert weights). Passage ids, routing rows
  and text stay at the site.
* :class:`PoolRelease`, coordinator → site, after the rounds: ``version`` (count);
  ``experts`` (the published pool's factors); ``settings`` (its settings as numbers). The site
  keeps it to route with and to encode new passages against.
* :class:`ReleaseAck`, site → coordinator: ``site``; ``version``; ``encoded`` and ``pending``
  (counts of the site's passages with and without routing rows).
* :class:`RoutingRequest`, query API → site: ``k`` (how many passages to search for); ``score_temperature``
  (the blend's softmax temperature); ``queries`` (one tensor, ``embeddings [Q, D]``: the questions'
  retrieval embeddings, never their text).
* :class:`RoutingReply`, site → query API, one per query: ``site``; ``version``; ``scores``
  (the retrieval scores of the site's top-k passages, keyed by ids fresh for that reply: an HMAC
  under the site's secret); ``mixture`` (one ``[G, K]`` tensor: those passages' routing rows
  blended by softmax(score / temperature)). A passage's own routing row never leaves: with the
  pool it would be that passage's encoding.

In distilled mode (``federation.mode = "distilled"``) the shared model is DistilledPRAG's generator:

* :class:`GeneratorTask`, coordinator → site: ``round`` and ``version`` (counts); ``generator``
  (the generator's parameters, keyed by parameter name); ``settings`` (the distillation settings
  as numbers).
* :class:`GeneratorUpdate`, site → coordinator: ``site``; ``round``, ``version``, ``passages`` and
  ``qa_pairs`` (counts of the site's passages and of the QA pairs it distilled on: its data size);
  ``loss``; ``generator`` (its distilled copy, same shapes). The documents, the questions and the
  teacher's outputs stay at the site.
* :class:`GeneratorRelease`, coordinator → site: ``version``; ``generator``; ``settings``; answered
  with a :class:`ReleaseAck`.
* :class:`FactorReply`, site → query API, one per query: ``site``; ``version``; ``scores`` (as in
  :class:`RoutingReply`); ``lengths`` (each of those passages' token count, under the same ids:
  the query API puts that many mask tokens in the prompt); ``factors`` (the LoRA the generator
  made from the site's top-k documents, ``<module>.lora_A [r, in]`` and ``<module>.lora_B
  [out, r]``, the LoRA scale folded into B), with ``site.factor_noise`` on them (none by default;
  :mod:`fedprag.shared.eval.leakage` measures what they give away).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Self

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedprag.shared.proto import routing_pb2

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,63}$")
_FLOAT_KINDS = {"f"}
KINDS = ("count", "score", "id", "tensors", "scores")


class WireError(ValueError):
    """A value or a record that the wire schema does not admit."""


def check_id(value: object, where: str) -> str:
    if not isinstance(value, str) or not _ID.match(value):
        raise WireError(f"{where}: not an opaque id (≤64 chars of [A-Za-z0-9_.:-])")
    return value


def check_count(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise WireError(f"{where}: not a count (a non-negative integer)")
    return int(value)


def check_score(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) or not math.isfinite(value):
        raise WireError(f"{where}: not a score (a finite number)")
    return float(value)


def check_tensor(value: object, where: str) -> np.ndarray:
    if not isinstance(value, np.ndarray) or value.dtype.kind not in _FLOAT_KINDS:
        raise WireError(f"{where}: not a floating-point tensor")
    if not np.isfinite(value).all():
        raise WireError(f"{where}: tensor holds NaN or infinite values")
    return value


def _kind(name: str) -> dict[str, str]:
    if name not in KINDS:
        raise ValueError(f"unknown wire kind {name}")
    return {"wire": name}


def count(default: int | None = None) -> object:
    """A count field; with ``default``, one that code building a message may leave out (every field
    still travels and is required when decoding)."""
    return field(metadata=_kind("count")) if default is None else field(default=default, metadata=_kind("count"))


def score() -> object:
    return field(metadata=_kind("score"))


def opaque_id() -> object:
    return field(metadata=_kind("id"))


def tensors(optional: bool = False) -> object:
    """A tensors field (id → tensor); ``optional`` ones default to none when a message is built
    (every field still travels and is required when decoding)."""
    return field(default_factory=dict, metadata=_kind("tensors")) if optional else field(metadata=_kind("tensors"))


def scores() -> object:
    return field(metadata=_kind("scores"))


def record_blobs(record: RecordDict) -> list[bytes]:
    """The serialised objects of a record and everything it holds: exactly what crosses the wire."""
    blobs = [record.deflate()]
    for child in (record.children or {}).values():
        blobs += record_blobs(child)  # type: ignore[arg-type]
    return blobs


def record_bytes(record: RecordDict) -> int:
    """Serialised size of a record and everything it holds."""
    return sum(len(b) for b in record_blobs(record))


class WireMessage:
    """Base of every wire message: validation plus conversion to and from a Flower ``RecordDict``."""

    KIND: ClassVar[str]

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            kind, value, where = f.metadata["wire"], getattr(self, f.name), f"{self.KIND}.{f.name}"
            if kind == "count":
                check_count(value, where)
            elif kind == "score":
                check_score(value, where)
            elif kind == "id":
                check_id(value, where)
            else:
                if not isinstance(value, Mapping):
                    raise WireError(f"{where}: must be a mapping from id to {'tensor' if kind == 'tensors' else 'score'}")
                check = check_tensor if kind == "tensors" else check_score
                for key, item in value.items():
                    check(item, f"{where}[{check_id(key, where + ' key')}]")

    def to_record(self) -> RecordDict:
        numbers: dict[str, int | float] = {}
        ids: dict[str, str] = {"kind": self.KIND}
        record = RecordDict()
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            kind, value = f.metadata["wire"], getattr(self, f.name)
            if kind in ("count", "score"):
                numbers[f.name] = value
            elif kind == "id":
                ids[f.name] = value
            elif kind == "tensors":
                record[f"t.{f.name}"] = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in value.items()})
            else:
                record[f"s.{f.name}"] = MetricRecord({k: float(v) for k, v in value.items()})
        record["numbers"] = MetricRecord(numbers)
        record["ids"] = ConfigRecord(ids)
        return record

    @classmethod
    def from_record(cls, record: RecordDict) -> Self:
        """Decode and validate; refuses unknown records, unknown keys and values of the wrong kind."""
        fields = {f.name: f.metadata["wire"] for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        expected = {"numbers", "ids"} | {f"t.{n}" for n, k in fields.items() if k == "tensors"} | \
                   {f"s.{n}" for n, k in fields.items() if k == "scores"}
        if set(record) != expected:
            raise WireError(f"{cls.KIND}: records {sorted(record)} do not match the schema {sorted(expected)}")
        ids = dict(record["ids"])
        if ids.pop("kind", None) != cls.KIND:
            raise WireError(f"not a {cls.KIND} message")
        numbers = dict(record["numbers"])
        values: dict[str, object] = {}
        for name, kind in fields.items():
            if kind in ("count", "score"):
                if name not in numbers:
                    raise WireError(f"{cls.KIND}.{name}: missing")
                values[name] = numbers.pop(name)
            elif kind == "id":
                if name not in ids:
                    raise WireError(f"{cls.KIND}.{name}: missing")
                values[name] = ids.pop(name)
            elif kind == "tensors":
                values[name] = {k: a.numpy() for k, a in record[f"t.{name}"].items()}
            else:
                values[name] = dict(record[f"s.{name}"])
        if numbers or ids:
            raise WireError(f"{cls.KIND}: fields {sorted(numbers) + sorted(ids)} are not in the schema")
        return cls(**values)  # type: ignore[call-arg]

    def to_proto(self) -> routing_pb2.WireRecord:
        """This message as a gRPC ``WireRecord`` (tensors as little-endian float32)."""
        out = routing_pb2.WireRecord(kind=self.KIND)
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            kind, value = f.metadata["wire"], getattr(self, f.name)
            if kind == "count":
                out.counts[f.name] = value
            elif kind == "score":
                out.scores[f.name] = value
            elif kind == "id":
                out.ids[f.name] = value
            elif kind == "tensors":
                for key, array in value.items():
                    data = np.ascontiguousarray(array, dtype="<f4")
                    out.tensors[f.name].items[key].shape.extend(data.shape)
                    out.tensors[f.name].items[key].data = data.tobytes()
            else:
                out.score_maps[f.name].items.update({k: float(v) for k, v in value.items()})
        return out

    @classmethod
    def from_proto(cls, record: routing_pb2.WireRecord) -> Self:
        """Decode and validate a ``WireRecord``; refuses another kind, unknown fields and bad values."""
        if record.kind != cls.KIND:
            raise WireError(f"not a {cls.KIND} message")
        fields = {f.name: f.metadata["wire"] for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        sections = {"count": record.counts, "score": record.scores, "id": record.ids,
                    "tensors": record.tensors, "scores": record.score_maps}
        for kind, present in sections.items():
            unknown = set(present) - {n for n, k in fields.items() if k == kind}
            if unknown:
                raise WireError(f"{cls.KIND}: fields {sorted(unknown)} are not in the schema")
        values: dict[str, object] = {}
        for name, kind in fields.items():
            section = sections[kind]
            if kind in ("count", "score", "id"):
                if name not in section:
                    raise WireError(f"{cls.KIND}.{name}: missing")
                values[name] = section[name]
            elif kind == "tensors":
                values[name] = {key: _tensor(item, f"{cls.KIND}.{name}[{key}]")
                                for key, item in section[name].items.items()} if name in section else {}
            else:
                values[name] = dict(section[name].items) if name in section else {}
        return cls(**values)  # type: ignore[call-arg]


def _tensor(item: routing_pb2.Tensor, where: str) -> np.ndarray:
    """A ``Tensor`` protobuf as a float32 array; refuses data that does not fill its shape."""
    shape = tuple(item.shape)
    if len(item.data) != 4 * math.prod(shape):
        raise WireError(f"{where}: {len(item.data)} bytes do not hold a float32 tensor of shape {list(shape)}")
    return np.frombuffer(item.data, dtype="<f4").reshape(shape).astype(np.float32)


@dataclass(frozen=True)
class RoundTask(WireMessage):
    """Coordinator → site: the current expert pool, the learned query router, and the round's numeric settings."""

    KIND: ClassVar[str] = "round_task"
    round: int = count()
    version: int = count()
    experts: Mapping[str, np.ndarray] = tensors()
    settings: Mapping[str, float] = scores()
    router: Mapping[str, np.ndarray] = tensors(optional=True)


@dataclass(frozen=True)
class SiteUpdate(WireMessage):
    """Site → coordinator: the trained experts, the site's routing mass on each, and counts.

    ``mass`` holds one tensor, ``routing_mass`` ``[G, K]``: ``m_sk = Σ_p w_pk`` over the site's
    passages. Routing rows themselves never leave the site. ``router`` is the learned query router
    after the site's steps on ``questions`` of its own questions.
    """

    KIND: ClassVar[str] = "site_update"
    site: str = opaque_id()
    round: int = count()
    version: int = count()
    passages: int = count()
    sequences: int = count()
    loss: float = score()
    experts: Mapping[str, np.ndarray] = tensors()
    mass: Mapping[str, np.ndarray] = tensors()
    questions: int = count(default=0)
    router: Mapping[str, np.ndarray] = tensors(optional=True)


@dataclass(frozen=True)
class PoolRelease(WireMessage):
    """Coordinator → site: a published pool version, to route with and to encode new passages against."""

    KIND: ClassVar[str] = "pool_release"
    version: int = count()
    experts: Mapping[str, np.ndarray] = tensors()
    settings: Mapping[str, float] = scores()
    router: Mapping[str, np.ndarray] = tensors(optional=True)


@dataclass(frozen=True)
class ReleaseAck(WireMessage):
    """Site → coordinator: the release was kept; how many of the site's passages are encoded and
    pending; and the site's last steps on the learned query router (``router``, continued from the
    released one on ``questions`` of the site's own questions)."""

    KIND: ClassVar[str] = "release_ack"
    site: str = opaque_id()
    version: int = count()
    encoded: int = count()
    pending: int = count()
    questions: int = count(default=0)
    router: Mapping[str, np.ndarray] = tensors(optional=True)


@dataclass(frozen=True)
class RoutingRequest(WireMessage):
    """Query API → site: the questions' retrieval embeddings (``queries``, one tensor
    :data:`EMBEDDINGS` ``[Q, D]``), how many passages to search for, and the blend's temperature."""

    KIND: ClassVar[str] = "routing_request"
    k: int = count()
    score_temperature: float = score()
    queries: Mapping[str, np.ndarray] = tensors()


@dataclass(frozen=True)
class RoutingReply(WireMessage):
    """Site → query API, for one query: the scores of the site's best passages (under ids fresh for
    this reply) and one expert mixture ``[G, K]``, their routing rows blended by score.

    ``mixture`` holds one tensor, :data:`MIXTURE`. No passage's own routing row is in the reply.
    """

    KIND: ClassVar[str] = "routing_reply"
    site: str = opaque_id()
    version: int = count()
    scores: Mapping[str, float] = scores()
    mixture: Mapping[str, np.ndarray] = tensors()


@dataclass(frozen=True)
class GeneratorTask(WireMessage):
    """Coordinator → site (distilled mode): the current generator and the round's distillation settings."""

    KIND: ClassVar[str] = "generator_task"
    round: int = count()
    version: int = count()
    generator: Mapping[str, np.ndarray] = tensors()
    settings: Mapping[str, float] = scores()


@dataclass(frozen=True)
class GeneratorUpdate(WireMessage):
    """Site → coordinator (distilled mode): the generator after the site's distillation steps."""

    KIND: ClassVar[str] = "generator_update"
    site: str = opaque_id()
    round: int = count()
    version: int = count()
    passages: int = count()
    qa_pairs: int = count()
    loss: float = score()
    generator: Mapping[str, np.ndarray] = tensors()


@dataclass(frozen=True)
class GeneratorRelease(WireMessage):
    """Coordinator → site (distilled mode): a published generator version, to answer queries with."""

    KIND: ClassVar[str] = "generator_release"
    version: int = count()
    generator: Mapping[str, np.ndarray] = tensors()
    settings: Mapping[str, float] = scores()


@dataclass(frozen=True)
class FactorReply(WireMessage):
    """Site → query API (distilled mode), for one query: the scores of the site's best passages
    (under ids fresh for this reply), their token counts, and the LoRA factors the site's generator
    made from them."""

    KIND: ClassVar[str] = "factor_reply"
    site: str = opaque_id()
    version: int = count()
    lengths: Mapping[str, float] = scores()  # before ``scores``, whose name shadows the field maker
    scores: Mapping[str, float] = scores()
    factors: Mapping[str, np.ndarray] = tensors()


TASKS: tuple[type[WireMessage], ...] = (RoundTask, GeneratorTask)
"""What a coordinator sends for a round, by mode."""
RELEASES: tuple[type[WireMessage], ...] = (PoolRelease, GeneratorRelease)
"""What a coordinator sends after the rounds, by mode."""


def decode(record: RecordDict, kinds: tuple[type[WireMessage], ...]) -> WireMessage:
    """The record as whichever of ``kinds`` it declares; refuses any other kind."""
    ids = record.get("ids")
    declared = str(ids.get("kind", "")) if isinstance(ids, ConfigRecord) else ""
    for kind in kinds:
        if kind.KIND == declared:
            return kind.from_record(record)
    raise WireError(f"a '{declared}' message is not one of {', '.join(k.KIND for k in kinds)}")


def decode_proto(record: routing_pb2.WireRecord, kinds: tuple[type[WireMessage], ...]) -> WireMessage:
    """A ``WireRecord`` as whichever of ``kinds`` it declares; refuses any other kind."""
    for kind in kinds:
        if kind.KIND == record.kind:
            return kind.from_proto(record)
    raise WireError(f"a '{record.kind}' message is not one of {', '.join(k.KIND for k in kinds)}")


ROUTING_REPLIES: tuple[type[WireMessage], ...] = (RoutingReply, FactorReply)
"""What a site's routing service answers with, by mode."""
MIXTURE = "mixture"
EMBEDDINGS = "embeddings"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""A routing call's size limit either way: distilled mode's replies carry a LoRA per query (about
180 kB on the built-in model)."""
