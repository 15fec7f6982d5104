"""The contract's error shape, `{"error": {"code", "message", "details"}}`, everywhere."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import msgspec
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from collectord.api.messages import language_of, message

# The body-size limit, for the 413 message.
MAX_BODY_KEY = web.AppKey("max_body", int)
log = logging.getLogger("collectord.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """An answer with an error status; `code` keys the message catalogue."""

    def __init__(
        self,
        status: int,
        code: str,
        details: object = None,
        headers: dict[str, str] | None = None,
        **params: object,
    ) -> None:
        super().__init__(code)
        self.status = status
        self.code = code
        self.details = details
        self.headers = headers
        self.params = params


def json_response(body: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=msgspec.json.encode(body),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def error_body(request: web.Request, error: ApiError) -> dict[str, object]:
    """The contract's error document, in the language the request prefers."""
    language = language_of(request.headers.get("Accept-Language"))
    return {
        "error": {
            "code": error.code,
            "message": message(error.code, language, error.params),
            "details": error.details,
        }
    }


def error_response(request: web.Request, error: ApiError) -> web.Response:
    response = json_response(error_body(request, error), status=error.status, headers=error.headers)
    response.headers["Content-Language"] = language_of(request.headers.get("Accept-Language"))
    return response


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as error:
        return error_response(request, error)
    except web.HTTPNotFound:
        return error_response(request, ApiError(404, "not_found", path=request.path))
    except web.HTTPMethodNotAllowed as not_allowed:
        allowed = ", ".join(sorted(not_allowed.allowed_methods))
        refusal = ApiError(
            405, "method_not_allowed", details={"allowed": allowed}, headers={"Allow": allowed}, method=request.method
        )
        return error_response(request, refusal)
    except web.HTTPRequestEntityTooLarge as too_large:
        limit = request.app.get(MAX_BODY_KEY, too_large.text)
        return error_response(request, ApiError(413, "body_too_large", max=limit))
    except RequestPayloadError as unreadable:
        # A body that cannot be decoded (corrupt gzip, a broken chunked encoding).
        reason = str(unreadable).split(":", 1)[-1].strip()
        return error_response(request, ApiError(400, "invalid_body", details={"reason": reason}, reason=reason))
    except web.HTTPException:
        raise
    except Exception:
        log.exception("request failed", extra={"path": request.path})
        return error_response(request, ApiError(500, "internal"))
