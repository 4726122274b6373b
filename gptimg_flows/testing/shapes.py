"""Each provider's error body and auth header, so a client meets the shapes it will meet live.

Shapes follow docs/wire.md; the ones marked assumed there are assumed here too.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    429: "requests",
    500: "server_error",
    503: "server_error",
}


def error_body(
    provider: str,
    status: int,
    code: str,
    message: str,
    *,
    param: str | None = None,
    task_uuid: str | None = None,
) -> dict[str, Any]:
    """The provider's own error JSON."""
    if provider == "openai":
        kind = "insufficient_quota" if code == "insufficient_quota" else None
        if code == "moderation_blocked":
            kind = "image_generation_user_error"
        return {
            "error": {
                "message": message,
                "type": kind or _OPENAI_TYPES.get(status, "invalid_request_error"),
                "code": code,
                "param": param,
            }
        }
    if provider == "scenario":
        body: dict[str, Any] = {"error": message, "code": code}
        if param:
            body["parameter"] = param
        return body
    if provider == "runware":
        item: dict[str, Any] = {"code": code, "message": message}
        if param:
            item["parameter"] = param
        if task_uuid:
            item["taskUUID"] = task_uuid
        return {"errors": [item]}
    if provider == "skillsvideo":
        inner: dict[str, Any] = {"code": code, "message": message}
        if param:
            inner["param"] = param
        return {"error": inner}
    # gptimage2ai: a bare code string (a readable message alongside does no harm)
    return {"error": code, "message": message}


def error_response(
    provider: str,
    status: int,
    code: str,
    message: str,
    *,
    param: str | None = None,
    task_uuid: str | None = None,
    retry_after: float | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    headers = dict(headers or {})
    if retry_after is not None and "retry-after" not in headers:
        headers["retry-after"] = f"{retry_after:g}"
        if provider == "openai":
            headers["retry-after-ms"] = str(round(retry_after * 1000))
    body = error_body(provider, status, code, message, param=param, task_uuid=task_uuid)
    return JSONResponse(body, status_code=status, headers=headers)


# -- canned errors --------------------------------------------------------------------------

RATE_LIMIT_CODES = {
    "openai": "rate_limit_exceeded",
    "scenario": "rate_limited",
    "runware": "tooManyRequests",
    "skillsvideo": "rate_limited",
    "gptimage2ai": "rate_limited",
}
CREDIT_CODES = {
    "openai": "insufficient_quota",
    "scenario": "insufficient_credits",
    "runware": "insufficientCredits",
    "skillsvideo": "insufficient_credits",
    "gptimage2ai": "insufficient_credits",
}
AUTH_CODES = {
    "openai": "invalid_api_key",
    "scenario": "unauthorized",
    "runware": "invalidApiKey",
    "skillsvideo": "unauthorized",
    "gptimage2ai": "unauthorized",
}
MODERATION_CODES = {
    "openai": "moderation_blocked",
    "scenario": "content_moderation",
    "runware": "contentModeration",
    "skillsvideo": "content_moderation",
    "gptimage2ai": "content_moderation",
}
SERVER_CODES = {
    "openai": "server_error",
    "scenario": "internal_error",
    "runware": "internalServerError",
    "skillsvideo": "internal_error",
    "gptimage2ai": "internal_error",
}


def rate_limited(
    provider: str,
    retry_after: float,
    message: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return error_response(
        provider,
        429,
        RATE_LIMIT_CODES[provider],
        message or "Too many requests: rate limit reached, retry later.",
        retry_after=retry_after,
        headers=headers,
    )


def out_of_credits(provider: str, task_uuid: str | None = None) -> JSONResponse:
    status = 429 if provider == "openai" else 402
    message = (
        "You exceeded your current quota, please check your plan and billing details."
        if provider == "openai"
        else "Insufficient credits for this request."
    )
    return error_response(provider, status, CREDIT_CODES[provider], message, task_uuid=task_uuid)


def unauthorized(provider: str) -> JSONResponse:
    return error_response(
        provider, 401, AUTH_CODES[provider], "Invalid or missing API key / credentials."
    )


def moderation_blocked(provider: str, task_uuid: str | None = None) -> JSONResponse:
    return error_response(
        provider,
        400,
        MODERATION_CODES[provider],
        "Your request was rejected by the content moderation system.",
        task_uuid=task_uuid,
    )


def server_error(
    provider: str, status: int = 500, retry_after: float | None = None
) -> JSONResponse:
    message = "The server had an error while processing your request."
    if status == 503:
        message = "The service is temporarily overloaded; retry later."
    return error_response(
        provider, status, SERVER_CODES[provider], message, retry_after=retry_after
    )


def not_found(provider: str, what: str, task_uuid: str | None = None) -> JSONResponse:
    code = "taskNotFound" if provider == "runware" else "not_found"
    status = 400 if provider == "runware" else 404
    return error_response(provider, status, code, f"{what} not found", task_uuid=task_uuid)


def invalid(
    provider: str,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    task_uuid: str | None = None,
) -> JSONResponse:
    default = {
        "openai": "invalid_value",
        "scenario": "invalid_parameter",
        "runware": "invalidParameter",
        "skillsvideo": "invalid_request",
        "gptimage2ai": "invalid_request",
    }[provider]
    return error_response(provider, 400, code or default, message, param=param, task_uuid=task_uuid)


# -- auth -------------------------------------------------------------------------------------


def bearer_ok(request: Request, key: str) -> bool:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip(), key)


def basic_ok(request: Request, key: str, secret: str) -> bool:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return False
    return hmac.compare_digest(decoded, f"{key}:{secret}")


def authorized(provider: str, request: Request, keys: dict[str, Any]) -> bool:
    expected = keys.get(provider)
    if expected is None:
        return False
    if isinstance(expected, (tuple, list)):
        return basic_ok(request, str(expected[0]), str(expected[1]))
    return bearer_ok(request, str(expected))
