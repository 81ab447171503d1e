"""One error shape for every 4xx and 5xx: RFC 9457 problem details (`application/problem+json`).

    {"type": "about:blank", "title": "Unprocessable Content", "status": 422,
     "detail": "invalid UTF-8 at byte 1", "file": "bad.csv", "line": 4, "column": 1}

`type` is `about:blank` (the status code says what kind of problem it is; `title` is its phrase),
`detail` is the readable message, and the extension members `file`, `line`, `column` and `field` say
where bad data is wrong; a request that fails its schema lists every issue in `errors`. Routes raise
`HTTPException(status, "message")` or `HTTPException(status, {"message": ..., "file": ..., ...})`;
the handlers here turn both, FastAPI's validation errors, the service's own exceptions and any
unhandled error into a problem. A page route (one that answers HTML) renders the same problem as the
error page. `install` also declares the shape for every error response in the OpenAPI document.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.schemas import Problem

log = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
WHERE = ("file", "line", "column", "field")


_RFC9110_TITLES = {413: "Content Too Large", 422: "Unprocessable Content"}  # Python 3.11 has the older names


def title(status: int) -> str:
    if status in _RFC9110_TITLES:
        return _RFC9110_TITLES[status]
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def problem_body(status: int, detail: str | None, **members: Any) -> dict[str, Any]:
    """The problem as a dict; members that do not apply (None) are left out."""
    body = {"type": "about:blank", "title": title(status), "status": status, "detail": detail or title(status)}
    body.update({k: v for k, v in members.items() if v is not None})
    return body


def problem_response(request: Request | None, status: int, detail: str | None, *,
                     headers: dict[str, str] | None = None, **members: Any) -> Response:
    body = problem_body(status, detail, **members)
    if request is not None and _is_page(request):
        from app.rendering import render

        return render(request, "error.html", {"title": body["title"], "message": body["detail"], "problem": body},
                      status_code=status)
    return JSONResponse(jsonable_encoder(body), status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


def _is_page(request: Request) -> bool:
    """A page route (it answers HTML), or a browser navigating to a path that matched no route."""
    route = request.scope.get("route")
    if route is not None:
        return getattr(route, "response_class", None) is HTMLResponse
    return "text/html" in request.headers.get("accept", "")


def _from_detail(detail: Any) -> tuple[str | None, dict[str, Any]]:
    """An HTTPException's detail: a message, or a dict with `message` and where-members."""
    if isinstance(detail, dict):
        members = {k: v for k, v in detail.items() if k != "message"}
        return (str(detail["message"]) if detail.get("message") is not None else None), members
    return (None if detail is None else str(detail)), {}


def _issue_field(loc: list[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header", "cookie"):
        parts = parts[1:]
    return ".".join(parts)


def validation_problem(request: Request, errors: list[dict[str, Any]]) -> Response:
    issues: list[dict[str, Any]] = [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
        for e in jsonable_encoder(errors)]
    first: dict[str, Any] = issues[0] if issues else {"loc": [], "msg": "invalid request"}
    field = _issue_field(first["loc"]) or None
    detail = f"{field}: {first['msg']}" if field else str(first["msg"])
    if len(issues) > 1:
        detail += f" (and {len(issues) - 1} more: see errors)"
    return problem_response(request, 422, detail, field=field, errors=issues)


def install(app: FastAPI) -> None:
    """Problem handlers for HTTP errors, schema violations and unhandled errors, and the OpenAPI declaration."""

    @app.exception_handler(StarletteHTTPException)
    async def http_problem(request: Request, exc: StarletteHTTPException) -> Response:
        detail, members = _from_detail(exc.detail)
        return problem_response(request, exc.status_code, detail, headers=getattr(exc, "headers", None), **members)

    @app.exception_handler(RequestValidationError)
    async def request_problem(request: Request, exc: RequestValidationError) -> Response:
        return validation_problem(request, list(exc.errors()))

    @app.exception_handler(Exception)
    async def internal_problem(request: Request, exc: Exception) -> Response:
        # Starlette re-raises after this answer, so the server logs the traceback once
        log.error("unhandled error on %s %s: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
        return problem_response(request, 500, f"internal error ({type(exc).__name__}); the service log has details")

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = problem_openapi(get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def problem_openapi(schema: dict[str, Any]) -> dict[str, Any]:
    """Every 4xx and 5xx response of every operation answers `application/problem+json` with `Problem`."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    problem = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, definition in problem.pop("$defs", {}).items():
        components[name] = definition
    components["Problem"] = problem
    ref = {"$ref": "#/components/schemas/Problem"}
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            if not isinstance(operation, dict):
                continue
            for code, response in (operation.get("responses") or {}).items():
                if code[:1] in ("4", "5"):
                    response["content"] = {PROBLEM_MEDIA_TYPE: {"schema": ref}}
                    if not response.get("description"):
                        response["description"] = title(int(code)) if code.isdigit() else "Error"
    for unused in ("HTTPValidationError", "ValidationError"):
        text = str(schema["paths"])
        if f"schemas/{unused}'" not in text:
            components.pop(unused, None)
    return schema
