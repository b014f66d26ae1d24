"""The HTTP API: Sylk Pushserver's v1 ``POST /push`` and the shared ASGI app.

Theory of operation: :func:`create_http_app` builds one FastAPI application
wrapped (outermost first) in the access list and a body-size limit, both
plain ASGI middlewares, so a refused or oversized request is answered before
routing and before the body is read.  Every answer, errors included, has the
Sylk shape ``{"code": int, "description": str, "data": object}``; framework
errors (unknown route, wrong method, validation) are reshaped by exception
handlers and never show a traceback.

The endpoints take the raw :class:`~starlette.requests.Request`; the body
becomes a :class:`~sidecar.model.PushRequest` and goes through
:mod:`sidecar.admission` (Sylk's lenient coercions and exact messages do not
fit a pydantic model).  The request schemas still appear in the OpenAPI
document at ``/docs`` (:mod:`.api_docs`).  ``POST /push``,
the busy route, is answered by a third middleware (:class:`PushFastLane`)
that calls the same handler without FastAPI's routing and dependency layers:
about 80 us per request instead of 180 us (measured in-process).

The HTTP layer never decides how a push is sent: it hands the admitted Push
to the runtime (``dispatch`` to wait for the outcome, ``spawn`` to answer at
once), see :class:`~sidecar.runtime_api.IngressRuntime`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import trio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from ..admission import admit, request_from_json
from ..config import Settings
from ..model import PushValidationError
from ..runtime_api import IngressRuntime
from ..store.base import StoreUnavailable
from . import server_errors
from .access import AccessListMiddleware, ASGIApp, Message, Receive, Scope, Send
from .answers import client_peer, decode_json, push_answer_json, send_json, sylk_json, sylk_response
from .api_docs import ERROR_RESPONSES, PushRequestDoc, SylkAnswer, request_body_doc
from .bearer import BearerTokenMiddleware
from .http_v2 import create_v2_router

logger = logging.getLogger("sidecar.ingress.http")

# -- middleware: body size -----------------------------------------------------------------


class BodyLimitMiddleware:
    """Answer 413 to bodies over ``settings.max_body_size`` bytes.

    A declared Content-Length over the limit is refused without reading.
    Otherwise the body is read here (counting the bytes as they stream in)
    and replayed to the application, so a chunked upload cannot exceed the
    limit either.  The limit is small (64 KiB by default), so buffering is
    cheap.
    """

    def __init__(self, app: ASGIApp, current_settings: Callable[[], Settings]):
        self.app = app
        self.current_settings = current_settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.current_settings().max_body_size
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _send_raw(send, 400, "invalid Content-Length header")
                    return
                if declared > limit:
                    await _send_raw(send, 413, f"request body larger than {limit} bytes")
                    return
                break
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _send_raw(send, 413, f"request body larger than {limit} bytes")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(b"".join(chunks), receive), send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that yields ``body`` once, then defers to the real one."""
    delivered = False

    async def replay_receive() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay_receive


async def _send_raw(send: Send, code: int, description: str) -> None:
    await send_json(send, code, sylk_json(code, description), close=True)


# -- v1 push: the core and its fast lane ----------------------------------------------------


async def answer_push_v1(runtime: IngressRuntime, raw: bytes, peer: str | None = None) -> tuple[int, bytes]:
    """Handle one v1 push request body; return (HTTP status, JSON answer).

    ``peer`` is the client (:func:`client_peer`).  Validation errors become
    Sylk answers here; only bugs raise.
    """
    settings = runtime.settings
    try:
        push, application, app_type = admit(
            request_from_json(decode_json(raw)),
            settings=settings,
            app_types=runtime.app_types,
            source="http",
            now=trio.current_time(),
            wall_now=time.time(),
            peer=peer,
        )
    except PushValidationError as exc:
        return exc.status, sylk_json(exc.status, exc.message)
    if not settings.return_async:
        runtime.spawn(push, application, app_type)
        return 202, sylk_json(202, "accepted for delivery")
    outcome = await runtime.dispatch(push, application, app_type)
    # The HTTP status is the push result code (Sylk); a code that is not an
    # HTTP status (0: no answer at all) must not break the response.
    status = outcome.code if 100 <= outcome.code <= 599 else 502
    return status, push_answer_json(status, push, outcome)


class PushFastLane:
    """Answer ``POST /push`` directly, skipping FastAPI's routing and dependency layers.

    ``/push`` carries the proxy-facing load (thousands of requests per
    second); FastAPI's per-request machinery costs about twice the handler
    itself.  The lane sits inside the access list and body limit (the body
    is already buffered) and answers exactly what the FastAPI route would.
    """

    def __init__(self, app: ASGIApp, runtime: IngressRuntime):
        self.app = app
        self.runtime = runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/push" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        try:
            status, body = await answer_push_v1(self.runtime, b"".join(chunks), client_peer(scope))
        except Exception:
            logger.exception("POST /push failed unexpectedly")
            status, body = 500, sylk_json(500, "internal server error")
        await send_json(send, status, body)


# -- the documentation pages ---------------------------------------------------------------

#: /docs and /redoc may load only what the sidecar serves.  Their assets are
#: ours already (fastapi-offline); this also stops ReDoc's footer from asking
#: Redocly's CDN for its logo (the image is then left out, by ReDoc itself).
DOCS_CSP = (
    b"default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    b"img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'"
)
DOCS_PAGES = frozenset({"/docs", "/redoc"})


class DocsPolicy:
    """Adds :data:`DOCS_CSP` to the answers of the documentation pages."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in DOCS_PAGES:
            await self.app(scope, receive, send)
            return

        async def send_with_policy(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), (b"content-security-policy", DOCS_CSP)]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_policy)


# -- the application -------------------------------------------------------------------------


def create_http_app(runtime: IngressRuntime, *, fast_lane: bool = True) -> ASGIApp:
    """Build the ASGI application of the HTTP API (v1, v2, health, docs).

    Args:
        runtime: the running daemon, see :class:`~sidecar.runtime_api.IngressRuntime`.  Its
          ``settings`` are read on every request, so reloads apply at once.
        fast_lane: answer ``POST /push`` in :class:`PushFastLane` rather
          than through FastAPI (same answers, about half the cost).
    """
    server_errors.install()

    # /docs (Swagger UI) and /redoc from assets shipped in the fastapi-offline
    # package, served by us: they work where no CDN can be reached.
    app = FastAPIOffline(
        title="pushsidecar",
        description="Sylk Pushserver-compatible push notification API (v1 and v2).",
        version="1",
        static_url="/docs-assets",
        # The validator badge would call validator.swagger.io.
        swagger_ui_parameters={"validatorUrl": None},
    )
    install_error_handlers(app)

    @app.post(
        "/push",
        summary="Send one push notification (Sylk v1)",
        response_model=SylkAnswer,
        responses=ERROR_RESPONSES,
        openapi_extra=request_body_doc(PushRequestDoc),
    )
    async def push_v1(request: Request) -> Response:
        # Normally answered by PushFastLane before FastAPI; kept for the
        # OpenAPI document and for apps built without the fast lane.
        status, body = await answer_push_v1(runtime, await request.body(), client_peer(request.scope))
        return Response(body, status_code=status, media_type="application/json")

    @app.get("/metrics", summary="Prometheus metrics (text format)")
    async def metrics() -> Response:
        source = getattr(runtime, "metrics", None)
        if source is None:
            return sylk_response(404, "metrics are not enabled")
        body, content_type = source.render()
        return Response(body, media_type=content_type)

    @app.get("/health", summary="Liveness check", response_model=SylkAnswer)
    async def health() -> Response:
        return sylk_response(200, "ok", {"status": "ok"})

    # Monitors and load balancers often probe with HEAD: same status, no body.
    app.add_api_route("/health", health, methods=["HEAD"], include_in_schema=False)

    app.include_router(create_v2_router(runtime))

    # Our three layers wrap FastAPI from the outside (not as FastAPI
    # middleware, which would run Starlette's error and telemetry layers
    # first): the access list runs first, then the body limit, then the fast
    # lane for POST /push; anything else goes on to FastAPI.  Bearer tokens,
    # when configured, are checked between the access list and the body limit.
    inner: ASGIApp = DocsPolicy(app)
    inner = PushFastLane(inner, runtime) if fast_lane else inner
    inner = BodyLimitMiddleware(inner, current_settings=lambda: runtime.settings)
    inner = BearerTokenMiddleware(inner, current_settings=lambda: runtime.settings)
    return AccessListMiddleware(inner, current_settings=lambda: runtime.settings)


def install_error_handlers(app: FastAPI) -> None:
    """Reshape every error into the Sylk answer form."""

    async def on_push_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, PushValidationError)
        return sylk_response(exc.status, exc.message)

    async def on_http_exception(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        return sylk_response(exc.status_code, str(exc.detail), headers=exc.headers)

    async def on_request_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return sylk_response(400, _validation_message(exc))

    async def on_store_unavailable(request: Request, exc: Exception) -> Response:
        detail = str(exc) or type(exc).__name__
        return sylk_response(503, f"token storage unavailable: {detail}")

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        # Starlette logs the exception after this answer; the client sees no details.
        return sylk_response(500, "internal server error")

    app.add_exception_handler(PushValidationError, on_push_validation)
    app.add_exception_handler(StarletteHTTPException, on_http_exception)
    app.add_exception_handler(RequestValidationError, on_request_validation)
    app.add_exception_handler(StoreUnavailable, on_store_unavailable)
    app.add_exception_handler(Exception, on_unexpected)


def _validation_message(exc: RequestValidationError) -> str:
    errors = exc.errors()
    if not errors:
        return "invalid request"
    first = errors[0]
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
    return f"{where}: {first.get('msg', 'invalid')}" if where else str(first.get("msg", "invalid"))
