"""The HTTP API and the page, on FastAPI: `create_app(engine, ServeConfig())`.

- `GET /`: the page (plain HTML, CSS and JS served by the app itself; works offline);
- `POST /v1/predict`: one image (a multipart `file`, or the raw bytes as the body) -> the top-k
  classes, and with `explain=true` the attention rollout, every head's map and an overlay PNG;
- `GET /v1/model`: the config, class names and preprocessing; `GET /healthz`;
- `GET /openapi.json`: the API's description. FastAPI's `/docs` and `/redoc` pages are off:
  they load their scripts from a CDN, and would be blank offline.

Bad input is answered, never fatal: a body over the size limit 413, not an image 415, an image
that cannot be used (truncated or corrupt, a decompression bomb) 422, each naming the problem
as `vitlab predict` does; a full queue 503 with `Retry-After`. Every error answer, FastAPI's
own included (a bad query parameter 422, an unknown path 404, a wrong method 405, an unreadable
form 400), is a JSON `{"error": "..."}`. A request never names a file on the server: images
come in the request only.
"""

# No `from __future__ import annotations` here: FastAPI reads the handlers' annotations (Request,
# the query parameters) at definition time, and Request is imported inside create_app.
import asyncio
import contextlib
import time
from dataclasses import dataclass
from importlib import resources
from typing import Any

from vitlab.data.images import ImageError
from vitlab.inspect.attention import no_attention
from vitlab.serve.batcher import Batcher, QueueFull
from vitlab.serve.engine import Engine

MB = 1024 * 1024


@dataclass
class ServeConfig:
    max_bytes: int = 16 * MB  # larger request bodies get 413
    max_batch: int = 16  # images per batch of the inference worker
    max_wait_ms: float = 5.0  # how long the worker waits for more requests to join a batch
    max_queue: int = 64  # requests waiting beyond this get 503
    retry_after: int = 1  # seconds, in the 503's Retry-After


BINARY = {"type": "string", "format": "binary"}
PREDICT_DOCS = {  # the body is read by hand (to enforce the size limit), so it is described here
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "properties": {"file": BINARY}, "required": ["file"]}
            },
            "application/octet-stream": {"schema": BINARY},
            "image/*": {"schema": BINARY},
        },
    },
    "responses": {
        "413": {"description": "the body is larger than the server's limit"},
        "415": {"description": "not an image"},
        "422": {"description": "an image that cannot be used, or a bad parameter"},
        "503": {"description": "the queue is full; retry after Retry-After seconds"},
    },
}


class BadRequest(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def error_status(e: ImageError) -> int:
    """415 for what is not an image at all, 422 for an image that cannot be used."""
    return 415 if e.kind == "not_image" else 422


def create_app(engine: Engine, config: ServeConfig | None = None) -> Any:
    """The FastAPI application serving `engine`; its batcher starts and stops with the app."""
    try:
        from fastapi import FastAPI, Request
        from fastapi.responses import HTMLResponse, JSONResponse
    except ImportError:
        from vitlab.errors import MissingDependencyError

        raise MissingDependencyError(
            "vitlab serve needs FastAPI and uvicorn: pip install 'vitlab[serve]'"
        ) from None
    config = config or ServeConfig()
    batcher = Batcher(engine.run, config.max_batch, config.max_wait_ms / 1000, config.max_queue)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        batcher.stop()

    app = FastAPI(
        title="vitlab serve",
        description=f"Image classification with {engine.name}",
        lifespan=lifespan,
        docs_url=None,  # Swagger UI and ReDoc load from a CDN: blank offline
        redoc_url=None,
    )
    app.state.batcher, app.state.engine, app.state.config = batcher, engine, config
    _answer_errors_as_json(app)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> str:
        return _asset("index.html")

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Any:
        from fastapi.responses import Response

        kinds = {"app.js": "text/javascript", "style.css": "text/css"}
        if name not in kinds:  # a fixed list: no path from a request reaches the disk
            raise BadRequest(404, f"no such file: {name}")
        return Response(_asset(name), media_type=kinds[name])

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        st = batcher.stats
        return {
            "status": "ok",
            "model": engine.name,
            "queued": batcher.waiting,
            "batches": st.batches,
            "images": st.images,
            "dropped": st.dropped,
            "inference_seconds": round(st.seconds, 3),
        }

    @app.get("/v1/model")
    async def model() -> dict[str, Any]:
        return engine.describe()

    @app.post("/v1/predict", openapi_extra=PREDICT_DOCS)
    async def predict(request: Request, topk: int = 5, explain: bool = False) -> JSONResponse:
        t0 = time.perf_counter()
        if topk < 1:
            raise BadRequest(422, f"topk must be at least 1, got {topk}")
        if explain and not engine.can_explain:
            raise BadRequest(422, f"{engine.name}: {no_attention(engine.model)}")
        data, filename = await _read_image(request, config.max_bytes)
        try:  # decoding off the event loop, which goes on reading the other requests
            x, show = await asyncio.to_thread(engine.prepare, data, filename)
        except ImageError as e:
            raise BadRequest(error_status(e), str(e)) from None
        try:
            future = batcher.submit(x, explain)
        except QueueFull:
            raise BadRequest(
                503,
                f"the server is busy ({config.max_queue} requests queued); retry shortly",
                {"Retry-After": str(config.retry_after)},
            ) from None
        output, batch = await _wait(request, future)
        body = engine.answer(output, topk, show if explain else None, time.perf_counter() - t0)
        body["batch_size"] = batch
        return JSONResponse(body)

    return app


def _answer_errors_as_json(app: Any) -> None:
    """Every error answer as `{"error": "..."}`: vitlab's own (BadRequest), FastAPI's request
    validation, Starlette's 404/405/400, and an unexpected failure (500)."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    def error(status: int, message: str, headers: dict[str, str] | None = None) -> Any:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(BadRequest)
    async def bad_request(request: Any, e: BadRequest) -> JSONResponse:
        return error(e.status, e.message, e.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Any, e: RequestValidationError) -> JSONResponse:
        return error(422, validation_message(e.errors()))

    @app.exception_handler(HTTPException)
    async def http_error(request: Any, e: HTTPException) -> JSONResponse:
        return error(e.status_code, http_message(request, e), e.headers)

    @app.exception_handler(Exception)
    async def failed(request: Any, e: Exception) -> JSONResponse:  # logged by the server too
        return error(500, f"the server failed on this request ({type(e).__name__}); see its log")


ROUTES = "the page is /, the API /v1/predict, /v1/model and /healthz, described at /openapi.json"


def validation_message(errors: Any) -> str:
    """FastAPI's validation errors as one line: `topk: Input should be ... (got 'abc')`."""
    parts = []
    for err in errors:
        where = ".".join(str(p) for p in err.get("loc", ())[1:]) or "request"
        got = f" (got {err['input']!r})" if "input" in err else ""
        parts.append(f"{where}: {err.get('msg', 'invalid')}{got}")
    return "; ".join(parts) or "invalid request"


def http_message(request: Any, e: Any) -> str:
    """Starlette's 404 and 405 (and any other HTTPException) said with what to do instead."""
    path = request.url.path
    if e.status_code == 404:
        return f"nothing at {path}; {ROUTES}"
    if e.status_code == 405:
        allowed = {k.lower(): v for k, v in (e.headers or {}).items()}.get("allow")
        return f"{request.method} is not allowed on {path}; use {allowed or 'another method'}"
    return str(e.detail)


async def _read_image(request: Any, limit: int) -> tuple[bytes, str]:
    """The image's bytes and name: a multipart upload's `file` field, or the raw body. More
    than `limit` bytes is a 413 before the rest is read."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BadRequest(413, f"the upload is {int(declared)} bytes; the limit is {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BadRequest(413, f"the upload is more than the {limit}-byte limit")
    if not body:
        raise BadRequest(415, "the request holds no image (send a file or the image bytes)")
    kind = request.headers.get("content-type", "")
    if not kind.startswith("multipart/form-data"):
        return bytes(body), "the uploaded image"
    request._body = bytes(body)  # starlette parses the form from the body read above
    form = await _form(request)
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise BadRequest(422, "the form has no file field named 'file'")
    return await upload.read(), upload.filename or "the uploaded image"


async def _form(request: Any) -> Any:
    """The multipart form; a form that cannot be parsed is a 400 saying how to send instead."""
    from starlette.exceptions import HTTPException

    try:
        return await request.form()
    except HTTPException as e:
        raise BadRequest(
            400,
            f"the multipart form cannot be read ({str(e.detail).rstrip('.')}); send the image "
            "as the form field 'file', or as the raw request body",
        ) from None


# How often a waiting request checks that its client is still there. Each check is Python work
# on the event loop, which holds the GIL the inference worker needs between operations: polled
# every 50 ms by 16 waiting requests, ViT-B/16 batches ran at half the speed they run alone.
DISCONNECT_POLL = 0.5


async def _wait(request: Any, future: Any) -> tuple[Any, int]:
    """The batcher's answer; a client that goes away cancels its place in the queue."""
    waiting = asyncio.wrap_future(future)
    while True:
        done, _ = await asyncio.wait({waiting}, timeout=DISCONNECT_POLL)
        if done:
            return waiting.result()
        if await request.is_disconnected():
            future.cancel()
            raise BadRequest(499, "the client went away")


def _asset(name: str) -> str:
    return resources.files("vitlab.serve").joinpath("static", name).read_text(encoding="utf-8")
