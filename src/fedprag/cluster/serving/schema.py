"""The query API's request and reply bodies (pydantic, so FastAPI validates them and writes the OpenAPI spec).

Two families: fedprag's own ``/v1/query`` with its trace, and the OpenAI-compatible subset a stock
client or RAG front-end sends (``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``).
No reply has a field that could carry passage text: the serving side never holds any.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MODEL = "fedprag"
"""The model name a client asks for: the latest pool; ``fedprag@<version>`` pins one."""

MAX_QUESTION_CHARS = 2000
MAX_BODY_BYTES = 64 * 1024
"""A larger request body is refused with 413 before it is parsed."""

_MODEL_NAME = re.compile(r"^fedprag(@(0|[1-9][0-9]{0,8}))?$")


def pinned_version(model: str) -> int | None:
    """The pool version ``fedprag@<version>`` pins, or ``None`` for ``fedprag`` (the latest)."""
    _, sep, version = model.partition("@")
    return int(version) if sep else None


def _check_model(value: str) -> str:
    if not _MODEL_NAME.match(value):
        raise ValueError(f"unknown model '{value[:40]}': use '{MODEL}' or '{MODEL}@<pool version>'")
    return value


class QueryRequest(BaseModel):
    """``POST /v1/query``: a question and how to route it."""

    model_config = ConfigDict(extra="forbid")

    question: str = Field(min_length=1, max_length=MAX_QUESTION_CHARS)
    top_k: int | None = Field(None, ge=1, le=64,
                              description="Passages each site scores, and the global top-k blended. Default: the server's.")
    routing: Literal["fanout", "router"] | None = Field(
        None, description="fanout: ask every site daemon; router: the learned central router. Default: the server's.")
    method: Literal["poly", "distilled", "closed_book"] | None = Field(
        None, description="The federation's parametric knowledge, as its mode stores it (poly: the expert pool; "
                          "distilled: the sites' generated LoRAs), or closed_book: the bare base model (no routing; "
                          "for comparison). Default: the federation's.")
    model: str = Field(MODEL, description="fedprag (the latest pool) or fedprag@<version>.")
    max_tokens: int | None = Field(None, ge=1, le=64)

    _model = field_validator("model")(_check_model)


class ExpertWeight(BaseModel):
    """One expert of the mixture the answer was generated with."""

    group: int
    expert: int
    weight: float


class Trace(BaseModel):
    """How one answer came about: who routed it, with which experts, on which pool, and how long each stage took."""

    routing: Literal["fanout", "router", "none"]
    sites_asked: list[str]
    sites_answered: list[str]
    sites_failed: dict[str, str] = Field(description="Site → why it was skipped (down, late, another pool version).")
    experts: list[ExpertWeight] = Field(description="The heaviest experts, heaviest first (at most 16).")
    pool_version: int
    batch_size: int = Field(description="Requests that shared this answer's forward pass.")
    replica_retries: int = Field(description="Times the request was re-sent because a replica died.")
    timings_ms: dict[str, float] = Field(description="route, generate, total.")


class QueryReply(BaseModel):
    answer: str
    model: str
    pool_version: int
    trace: Trace


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str = Field(max_length=MAX_QUESTION_CHARS)


class ChatCompletionRequest(BaseModel):
    """The OpenAI chat-completions request fedprag answers: the last user message is the question."""

    model: str = MODEL
    messages: list[ChatMessage] = Field(min_length=1, max_length=32)
    max_tokens: int | None = Field(None, ge=1, le=64)
    max_completion_tokens: int | None = Field(None, ge=1, le=64)
    temperature: float | None = Field(None, ge=0, le=2, description="Accepted; answers are greedy.")
    top_p: float | None = Field(None, ge=0, le=1, description="Accepted; answers are greedy.")
    n: Literal[1] = 1
    stream: Literal[False] = False
    user: str | None = Field(None, max_length=256)

    _model = field_validator("model")(_check_model)

    @field_validator("messages")
    @classmethod
    def _has_user_message(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        if not any(m.role == "user" and m.content.strip() for m in messages):
            raise ValueError("needs a user message with content (the question)")
        return messages

    def question(self) -> str:
        return next(m.content for m in reversed(self.messages) if m.role == "user" and m.content.strip())


class CompletionRequest(BaseModel):
    """The OpenAI (legacy) completions request: the prompt is the question."""

    model: str = MODEL
    prompt: str = Field(min_length=1, max_length=MAX_QUESTION_CHARS)
    max_tokens: int | None = Field(None, ge=1, le=64)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    n: Literal[1] = 1
    stream: Literal[False] = False
    user: str | None = Field(None, max_length=256)

    _model = field_validator("model")(_check_model)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ReplyMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: ReplyMessage
    finish_reason: Literal["stop", "length"] = "stop"


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    fedprag: Trace


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: Literal["stop", "length"] = "stop"
    logprobs: None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    fedprag: Trace


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "fedprag"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Health(BaseModel):
    status: Literal["ok"]
    pool_version: int | None = Field(description="The newest pool version answered with (none before the first answer).")
    routing: Literal["fanout", "router"] = Field(description="The default routing.")


class ErrorDetail(BaseModel):
    message: str
    type: str
    code: str | None = None


class ErrorReply(BaseModel):
    """Every refusal but 422 (FastAPI's validation error, which names the field)."""

    error: ErrorDetail


ERRORS = {status: {"model": ErrorReply, "description": text} for status, text in {
    401: "No valid API key (Authorization: Bearer <key>).",
    404: "The pinned pool version (fedprag@<version>) is not available.",
    413: f"The request body is over {MAX_BODY_BYTES} bytes.",
    429: "This API key's rate limit is spent; retry after the Retry-After seconds.",
    503: "No site answered with a usable pool, or no pool is published yet.",
}.items()}
"""The refusals every query endpoint documents in the OpenAPI spec."""
