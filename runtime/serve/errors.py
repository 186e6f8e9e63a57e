"""OpenAI-style errors: `{"error": {"message", "type", "param", "code"}}` with a fitting status."""

from __future__ import annotations

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
}


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        retry_after: int | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.retry_after = retry_after


def error_body(status: int, message: str, param: str | None = None, code: str | None = None):
    return {
        "error": {
            "message": message,
            "type": ERROR_TYPES.get(status, "invalid_request_error"),
            "param": param,
            "code": code,
        }
    }


def error_response(err: APIError) -> JSONResponse:
    headers = {"Retry-After": str(err.retry_after)} if err.retry_after is not None else None
    return JSONResponse(
        error_body(err.status, err.message, err.param, err.code), err.status, headers=headers
    )


async def handle_api_error(_: Request, err: Exception) -> JSONResponse:
    assert isinstance(err, APIError)
    return error_response(err)


async def handle_validation_error(_: Request, err: Exception) -> JSONResponse:
    """FastAPI's 422 becomes OpenAI's 400, naming the first offending field."""
    assert isinstance(err, RequestValidationError)
    errors = list(err.errors())
    if not errors:
        return error_response(APIError(400, "invalid request"))
    first = errors[0]
    if first.get("type") == "json_invalid":
        return error_response(
            APIError(400, "the request body is not valid JSON", code="json_invalid")
        )
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    # Union members add their type name to the path; keep only the field names and indices.
    field = ".".join(p for p in loc if not p.startswith(("list[", "str", "int", "function-")))
    message = f"{field or 'body'}: {first.get('msg', 'invalid value')}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problems)"
    return error_response(APIError(400, message, field or None, code="invalid_value"))


async def handle_http_error(_: Request, err: Exception) -> JSONResponse:
    assert isinstance(err, HTTPException)
    status = err.status_code
    return JSONResponse(error_body(status, str(err.detail)), status, headers=err.headers)


async def handle_unexpected(_: Request, err: Exception) -> JSONResponse:
    return JSONResponse(error_body(500, f"internal error: {type(err).__name__}: {err}"), 500)
