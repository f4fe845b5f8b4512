from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Tensor(_message.Message):
    __slots__ = ("shape", "data")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class TensorMap(_message.Message):
    __slots__ = ("items",)
    class ItemsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Tensor
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.MessageMap[str, Tensor]
    def __init__(self, items: _Optional[_Mapping[str, Tensor]] = ...) -> None: ...

class ScoreMap(_message.Message):
    __slots__ = ("items",)
    class ItemsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.ScalarMap[str, float]
    def __init__(self, items: _Optional[_Mapping[str, float]] = ...) -> None: ...

class WireRecord(_message.Message):
    __slots__ = ("kind", "counts", "scores", "ids", "tensors", "score_maps")
    class CountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class ScoresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class IdsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class TensorsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: TensorMap
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[TensorMap, _Mapping]] = ...) -> None: ...
    class ScoreMapsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: ScoreMap
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[ScoreMap, _Mapping]] = ...) -> None: ...
    KIND_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    SCORE_MAPS_FIELD_NUMBER: _ClassVar[int]
    kind: str
    counts: _containers.ScalarMap[str, int]
    scores: _containers.ScalarMap[str, float]
    ids: _containers.ScalarMap[str, str]
    tensors: _containers.MessageMap[str, TensorMap]
    score_maps: _containers.MessageMap[str, ScoreMap]
    def __init__(self, kind: _Optional[str] = ..., counts: _Optional[_Mapping[str, int]] = ..., scores: _Optional[_Mapping[str, float]] = ..., ids: _Optional[_Mapping[str, str]] = ..., tensors: _Optional[_Mapping[str, TensorMap]] = ..., score_maps: _Optional[_Mapping[str, ScoreMap]] = ...) -> None: ...

class RouteReplies(_message.Message):
    __slots__ = ("replies",)
    REPLIES_FIELD_NUMBER: _ClassVar[int]
    replies: _containers.RepeatedCompositeFieldContainer[WireRecord]
    def __init__(self, replies: _Optional[_Iterable[_Union[WireRecord, _Mapping]]] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SiteStatus(_message.Message):
    __slots__ = ("site", "passages", "encoded", "pending", "rounds_joined", "pool_version", "queries_served", "last_error", "uptime_seconds", "routing_address", "supernode_connected", "inbox_accepted", "inbox_rejected", "encoding", "serving")
    SITE_FIELD_NUMBER: _ClassVar[int]
    PASSAGES_FIELD_NUMBER: _ClassVar[int]
    ENCODED_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_JOINED_FIELD_NUMBER: _ClassVar[int]
    POOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    QUERIES_SERVED_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ROUTING_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    SUPERNODE_CONNECTED_FIELD_NUMBER: _ClassVar[int]
    INBOX_ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    INBOX_REJECTED_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    SERVING_FIELD_NUMBER: _ClassVar[int]
    site: str
    passages: int
    encoded: int
    pending: int
    rounds_joined: _containers.RepeatedScalarFieldContainer[int]
    pool_version: int
    queries_served: int
    last_error: str
    uptime_seconds: float
    routing_address: str
    supernode_connected: bool
    inbox_accepted: int
    inbox_rejected: int
    encoding: str
    serving: bool
    def __init__(self, site: _Optional[str] = ..., passages: _Optional[int] = ..., encoded: _Optional[int] = ..., pending: _Optional[int] = ..., rounds_joined: _Optional[_Iterable[int]] = ..., pool_version: _Optional[int] = ..., queries_served: _Optional[int] = ..., last_error: _Optional[str] = ..., uptime_seconds: _Optional[float] = ..., routing_address: _Optional[str] = ..., supernode_connected: _Optional[bool] = ..., inbox_accepted: _Optional[int] = ..., inbox_rejected: _Optional[int] = ..., encoding: _Optional[str] = ..., serving: _Optional[bool] = ...) -> None: ...

class QueryRequest(_message.Message):
    __slots__ = ("question", "top_k", "routing", "model", "max_tokens")
    QUESTION_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    ROUTING_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    question: str
    top_k: int
    routing: str
    model: str
    max_tokens: int
    def __init__(self, question: _Optional[str] = ..., top_k: _Optional[int] = ..., routing: _Optional[str] = ..., model: _Optional[str] = ..., max_tokens: _Optional[int] = ...) -> None: ...

class ExpertWeight(_message.Message):
    __slots__ = ("group", "expert", "weight")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    EXPERT_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    group: int
    expert: int
    weight: float
    def __init__(self, group: _Optional[int] = ..., expert: _Optional[int] = ..., weight: _Optional[float] = ...) -> None: ...

class QueryReply(_message.Message):
    __slots__ = ("answer", "model", "pool_version", "sites_asked", "sites_answered", "sites_failed", "experts", "timings_ms", "batch_size")
    class SitesFailedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class TimingsMsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    POOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SITES_ASKED_FIELD_NUMBER: _ClassVar[int]
    SITES_ANSWERED_FIELD_NUMBER: _ClassVar[int]
    SITES_FAILED_FIELD_NUMBER: _ClassVar[int]
    EXPERTS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_MS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    answer: str
    model: str
    pool_version: int
    sites_asked: _containers.RepeatedScalarFieldContainer[str]
    sites_answered: _containers.RepeatedScalarFieldContainer[str]
    sites_failed: _containers.ScalarMap[str, str]
    experts: _containers.RepeatedCompositeFieldContainer[ExpertWeight]
    timings_ms: _containers.ScalarMap[str, float]
    batch_size: int
    def __init__(self, answer: _Optional[str] = ..., model: _Optional[str] = ..., pool_version: _Optional[int] = ..., sites_asked: _Optional[_Iterable[str]] = ..., sites_answered: _Optional[_Iterable[str]] = ..., sites_failed: _Optional[_Mapping[str, str]] = ..., experts: _Optional[_Iterable[_Union[ExpertWeight, _Mapping]]] = ..., timings_ms: _Optional[_Mapping[str, float]] = ..., batch_size: _Optional[int] = ...) -> None: ...
