"""The central query API: a FastAPI ingress on Ray Serve, over HTTP and gRPC.

A request is admitted (body size and encoding, the body's schema, then the API key and its rate
limit: FastAPI validates the body before the handler checks the key), then routed and answered by
a :class:`~fedprag.cluster.serving.replica.Replica` replica in one handle call, and returned
with its trace. The ingress keeps the newest pool version it has returned and asks for no older
one, so versions never go backwards for a client (the ingress runs as one replica).
``/v1/query`` is fedprag's own shape; ``/v1/chat/completions``, ``/v1/completions`` and
``/v1/models`` are the OpenAI-compatible subset, and the gRPC ``FedpragQuery.Ask`` mirrors
``/v1/query``. ``/healthz`` and ``/metrics`` (Prometheus) need no key.

If the replica answering a request dies, the ingress sends the request once more to another
(``fedprag_replica_retries_total`` counts it).
"""

import hashlib
import hmac
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

import grpc
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError, RayError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from fedprag.cluster.serving import metrics
from fedprag.cluster.serving.messages import FanOutTrace, Generated, GenerateItem, RouteRequest
from fedprag.cluster.serving.schema import (
    ERRORS,
    MAX_BODY_BYTES,
    MODEL,
    ChatChoice,
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionChoice,
    CompletionRequest,
    ExpertWeight,
    Health,
    ModelCard,
    ModelList,
    QueryReply,
    QueryRequest,
    ReplyMessage,
    Trace,
    Usage,
    pinned_version,
)
from fedprag.coordinator.versions import versions_at
from fedprag.shared.limits import RateLimiter
from fedprag.shared.log import get_logger
from fedprag.shared.proto import routing_pb2

log = get_logger(__name__)

ENDPOINTS = ("/v1/query", "/v1/chat/completions", "/v1/completions", "/v1/models", "/healthz", "/metrics")


class ApiError(Exception):
    """A refusal with an OpenAI-style error body."""

    def __init__(self, status: int, message: str, kind: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.headers = status, message, kind, headers or {}


def _error_response(status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": str(status)}}, status, headers=headers)


def _unreadable_body(message: str) -> JSONResponse:
    """422 for a body that is not JSON at all, in FastAPI's validation-error shape."""
    return JSONResponse({"detail": [{"loc": ["body"], "msg": message, "type": "json_invalid"}]}, 422)


class Admission:
    """Pure ASGI middleware: refuses bodies over :data:`MAX_BODY_BYTES` with 413 and bodies that
    are not UTF-8 with 422 before anything parses them, and counts every request's status and latency."""

    def __init__(self, app: Callable):
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, endpoint = time.perf_counter(), scope["path"] if scope["path"] in ENDPOINTS else "other"
        status = [500]

        async def counted_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            body, more, too_big = b"", True, False
            length = dict(scope.get("headers") or []).get(b"content-length", b"0")
            too_big = length.isdigit() and int(length) > MAX_BODY_BYTES
            while more and not too_big:
                message = await receive()
                body += message.get("body", b"")
                more = message.get("more_body", False)
                too_big = len(body) > MAX_BODY_BYTES
            if too_big:
                await _error_response(413, f"request body over {MAX_BODY_BYTES} bytes", "request_too_large")(
                    scope, receive, counted_send)
                return
            try:
                body.decode("utf-8")
            except UnicodeDecodeError:
                await _unreadable_body("the body is not UTF-8 JSON")(scope, receive, counted_send)
                return
            replayed = [False]

            async def replay() -> dict:
                if not replayed[0]:
                    replayed[0] = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await self.app(scope, replay, counted_send)
        finally:
            metrics.REQUESTS.labels(endpoint, str(status[0])).inc()
            metrics.LATENCY.labels(endpoint).observe(time.perf_counter() - started)


app = FastAPI(title="fedprag query API", version="1",
              description="Questions answered from federated parametric knowledge. Passage text never reaches "
                          "this API: sites send scores and expert mixtures only.")
app.add_middleware(Admission)
bearer = HTTPBearer(auto_error=False, description="An API key from serve.api_keys.")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


@app.exception_handler(ApiError)
async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return _error_response(exc.status, exc.message, exc.kind, exc.headers)


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """A body that is not JSON (or not UTF-8) is a malformed request like any other: 422, naming the body."""
    if exc.status_code == 400:
        return _unreadable_body(str(exc.detail))
    return JSONResponse({"detail": exc.detail}, exc.status_code, headers=getattr(exc, "headers", None))


@dataclass(frozen=True)
class IngressSettings:
    api_keys: tuple[str, ...]
    rate_limit_qps: float
    rate_limit_burst: int
    key_rate_limits: dict[str, float]
    """Keys with a rate of their own (requests per second; their burst is twice that)."""
    routing: str
    top_k: int
    max_new_tokens: int
    registry: str
    method: str = "poly"
    """The federation's method (``federation.mode``): what a request that names none is answered with."""
    learned_router: bool = True
    """Whether that method can be routed by the learned router (``routing: "router"``), with no site."""


def _validation_error(field: str, message: str) -> RequestValidationError:
    """A 422 naming the body field, in FastAPI's own shape."""
    return RequestValidationError([{"loc": ("body", field), "msg": message, "type": "value_error"}])


def _grpc_refusal(context: object, code: object, message: str) -> routing_pb2.QueryReply:
    if context is not None:
        context.set_code(code)
        context.set_details(message)
    return routing_pb2.QueryReply()


def _versioned(version: int) -> str:
    return f"{MODEL}@{version}"


def _usage(generated: Generated) -> Usage:
    return Usage(prompt_tokens=generated.prompt_tokens, completion_tokens=generated.completion_tokens,
                 total_tokens=generated.prompt_tokens + generated.completion_tokens)


REPLICA_GONE = (RayActorError, ActorUnavailableError, grpc.aio.AioRpcError)
"""What a handle call raises when its replica died (``AioRpcError``: Ray Serve's gRPC transport)."""


def _replica_failed(exc: BaseException) -> ApiError:
    log.error("serve.replica.failed", error=type(exc).__name__)
    return ApiError(503, "no replica could answer; try again", "generation_failed")


def _trace(routing: str, generated: Generated, version: int, retries: int, started: float) -> Trace:
    """The reply's trace: sites asked, answered and failed, the heaviest experts, and the timings."""
    sites = generated.sites or FanOutTrace()
    route_s, generate_s = generated.timings
    return Trace(routing=routing, sites_asked=sites.asked, sites_answered=sites.answered, sites_failed=sites.failed,
                 experts=[ExpertWeight(group=g, expert=e, weight=w) for g, e, w in generated.experts], pool_version=version,
                 batch_size=generated.batch_size, replica_retries=retries,
                 timings_ms={"route": round(route_s * 1e3, 2), "generate": round(generate_s * 1e3, 2),
                             "total": round((time.perf_counter() - started) * 1e3, 2)})


@serve.deployment(name="Ingress", num_replicas=1, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=512)
@serve.ingress(app)
class Ingress:
    """The query API (one replica by default; it holds no model).

    Ray Serve pickles this class by value as it decorates it, so everything it uses is defined above it.
    """

    def __init__(self, replicas: DeploymentHandle, settings: IngressSettings):
        self.replicas, self.settings = replicas, settings
        self.newest = 0
        """The newest pool version returned to an unpinned request: none older is asked for."""
        self._keys = [hashlib.sha256(k.encode()).digest() for k in settings.api_keys]
        self._rate = RateLimiter(settings.rate_limit_qps, settings.rate_limit_burst)
        self._own_rates = {hashlib.sha256(k.encode()).digest(): RateLimiter(qps, max(1, round(2 * qps)))
                           for k, qps in settings.key_rate_limits.items()}

    # -- admission -------------------------------------------------------------------------------

    def _admit(self, credentials: HTTPAuthorizationCredentials | None) -> None:
        offered = hashlib.sha256((credentials.credentials if credentials else "").encode()).digest()
        if not any(hmac.compare_digest(offered, key) for key in self._keys):
            raise ApiError(401, "a valid API key is required (Authorization: Bearer <key>)", "invalid_api_key",
                           {"WWW-Authenticate": "Bearer"})
        limiter = self._own_rates.get(offered, self._rate)
        if not limiter.allow(offered):
            retry = max(1, round(1 / limiter.per_second))
            raise ApiError(429, f"rate limit: {limiter.per_second:g} requests per second for this key",
                           "rate_limit_exceeded", {"Retry-After": str(retry)})

    # -- the query path --------------------------------------------------------------------------

    async def _generate(self, item: GenerateItem) -> tuple[Generated, int]:
        """The generator's answer; re-sent once if the replica died under it. A replica that fails
        the request otherwise (a bug, not the input) is a 503, never a bare 500."""
        try:
            return await self.replicas.generate.remote(item), 0
        except REPLICA_GONE as exc:
            metrics.RETRIES.inc()
            log.warning("serve.replica.retry", error=type(exc).__name__)
        except RayError as exc:
            raise _replica_failed(exc) from None
        try:
            return await self.replicas.generate.remote(item), 1
        except (RayError, grpc.aio.AioRpcError) as exc:
            raise _replica_failed(exc) from None

    def _route_request(self, question: str, top_k: int | None, mode: str, model: str,
                       method: str) -> RouteRequest | None:
        """What the replica routes the question by (nothing for closed-book)."""
        if method == "closed_book":
            return None
        pinned = pinned_version(model)
        return RouteRequest(question, top_k or self.settings.top_k, mode, pinned,
                            min_version=self.newest if pinned is None else 0)

    async def _ask(self, question: str, top_k: int | None, routing: str | None, model: str,
                   max_tokens: int | None, method: str | None = None) -> tuple[Generated, Trace]:
        started = time.perf_counter()
        method = method or self.settings.method
        if method not in (self.settings.method, "closed_book"):
            raise _validation_error("method", f"this federation serves '{self.settings.method}' (or closed_book), "
                                              f"not '{method}'")
        if routing == "router" and method == self.settings.method and not self.settings.learned_router:
            raise _validation_error("routing", f"{method} routes by fan-out only: the sites make what answers")
        mode = routing or self.settings.routing
        route = self._route_request(question, top_k, mode, model, method)
        generated, retries = await self._generate(GenerateItem(question, max_tokens or self.settings.max_new_tokens,
                                                               method, route))
        for site in (generated.sites.failed if generated.sites else ()):
            metrics.SITE_ERRORS.labels(site).inc()
        if generated.kind == "question":
            raise _validation_error("question", generated.error)
        if generated.kind == "not_found":
            raise ApiError(404, generated.error, "model_not_found")
        if generated.kind == "unavailable":
            raise ApiError(503, generated.error, "routing_unavailable")
        if generated.error:
            raise ApiError(503, generated.error, "generation_failed")
        version = generated.version if generated.version is not None else self.newest
        if route is not None and route.version is None:
            self.newest = max(self.newest, version)
        route_s, generate_s = generated.timings
        metrics.STAGE.labels("route").observe(route_s)
        metrics.STAGE.labels("generate").observe(generate_s)
        metrics.BATCH.observe(generated.batch_size)
        metrics.POOL_VERSION.set(self.newest)
        return generated, _trace(mode if route is not None else "none", generated, version, retries, started)

    # -- HTTP ------------------------------------------------------------------------------------

    @app.post("/v1/query", response_model=QueryReply, responses=ERRORS, summary="Answer a question, with its trace")
    async def query(self, body: QueryRequest,
                    credentials: Credentials) -> QueryReply:
        self._admit(credentials)
        generated, trace = await self._ask(body.question, body.top_k, body.routing, body.model, body.max_tokens,
                                           body.method)
        return QueryReply(answer=generated.answer, model=_versioned(trace.pool_version), pool_version=trace.pool_version,
                          trace=trace)

    @app.post("/v1/chat/completions", response_model=ChatCompletion, responses=ERRORS,
              summary="OpenAI-compatible chat completion (the last user message is the question)")
    async def chat_completions(self, body: ChatCompletionRequest,
                               credentials: Credentials) -> ChatCompletion:
        self._admit(credentials)
        generated, trace = await self._ask(body.question(), None, None, body.model,
                                           body.max_completion_tokens or body.max_tokens)
        return ChatCompletion(id=f"chatcmpl-{uuid.uuid4().hex}", created=int(time.time()),
                              model=_versioned(trace.pool_version),
                              choices=[ChatChoice(message=ReplyMessage(content=generated.answer))],
                              usage=_usage(generated), fedprag=trace)

    @app.post("/v1/completions", response_model=Completion, responses=ERRORS,
              summary="OpenAI-compatible completion (the prompt is the question)")
    async def completions(self, body: CompletionRequest,
                          credentials: Credentials) -> Completion:
        self._admit(credentials)
        generated, trace = await self._ask(body.prompt, None, None, body.model, body.max_tokens)
        return Completion(id=f"cmpl-{uuid.uuid4().hex}", created=int(time.time()), model=_versioned(trace.pool_version),
                          choices=[CompletionChoice(text=generated.answer)], usage=_usage(generated), fedprag=trace)

    @app.get("/v1/models", response_model=ModelList, responses={k: ERRORS[k] for k in (401, 429)},
             summary="fedprag, and fedprag@<version> for every published pool")
    async def models(self, credentials: Credentials) -> ModelList:
        self._admit(credentials)
        now = int(time.time())
        versions = versions_at(self.settings.registry)
        return ModelList(data=[ModelCard(id=MODEL, created=now)] + [ModelCard(id=_versioned(v), created=now)
                                                                   for v in versions])

    @app.get("/healthz", response_model=Health, summary="Liveness: the ingress answers; the newest pool version served")
    async def healthz(self) -> Health:
        return Health(status="ok", pool_version=self.newest or None, routing=self.settings.routing)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response,
             responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}})
    async def metrics(self) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    # -- gRPC (fedprag.v1.FedpragQuery) ----------------------------------------------------------

    async def Ask(self, request: routing_pb2.QueryRequest, grpc_context=None) -> routing_pb2.QueryReply:
        """``/v1/query`` over gRPC; the API key comes as ``authorization: Bearer <key>`` metadata."""
        metadata = dict(grpc_context.invocation_metadata()) if grpc_context is not None else {}
        scheme, _, key = metadata.get("authorization", "").partition(" ")
        try:
            self._admit(HTTPAuthorizationCredentials(scheme=scheme or "Bearer", credentials=key))
            body = QueryRequest(question=request.question, top_k=request.top_k or self.settings.top_k,
                                routing=request.routing or None, model=request.model or MODEL,
                                max_tokens=request.max_tokens or None)
            generated, trace = await self._ask(body.question, body.top_k, body.routing, body.model, body.max_tokens)
        except ApiError as exc:
            codes = {401: grpc.StatusCode.UNAUTHENTICATED, 404: grpc.StatusCode.NOT_FOUND,
                     429: grpc.StatusCode.RESOURCE_EXHAUSTED}
            return _grpc_refusal(grpc_context, codes.get(exc.status, grpc.StatusCode.UNAVAILABLE), exc.message)
        except (ValueError, RequestValidationError) as exc:  # pydantic's ValidationError is a ValueError
            return _grpc_refusal(grpc_context, grpc.StatusCode.INVALID_ARGUMENT, str(exc)[:500])
        return routing_pb2.QueryReply(
            answer=generated.answer, model=_versioned(trace.pool_version), pool_version=trace.pool_version,
            sites_asked=trace.sites_asked, sites_answered=trace.sites_answered, sites_failed=trace.sites_failed,
            timings_ms=trace.timings_ms, batch_size=trace.batch_size,
            experts=[routing_pb2.ExpertWeight(group=e.group, expert=e.expert, weight=e.weight) for e in trace.experts])

