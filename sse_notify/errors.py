"""Errors as data: every non-2xx answer is an :class:`ApiError` rendered by one handler.

The body is always ``{"error": code, "message": sentence}`` with a JSON content type.
"""

from __future__ import annotations

import orjson

__all__ = ["ApiError", "error_body"]


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def body(self) -> bytes:
        return error_body(self.code, self.message)

    # The named answers the contract uses.
    @classmethod
    def unauthorized(cls, message: str = "A valid token is required.") -> ApiError:
        return cls(401, "unauthorized", message)

    @classmethod
    def bad_json(cls, message: str = "The request body is not valid JSON.") -> ApiError:
        return cls(400, "bad_request", message)

    @classmethod
    def invalid(cls, message: str) -> ApiError:
        return cls(422, "validation_error", message)

    @classmethod
    def not_found(cls, message: str = "Not found.") -> ApiError:
        return cls(404, "not_found", message)

    @classmethod
    def too_large(cls, limit: int) -> ApiError:
        return cls(413, "payload_too_large", f"The request body exceeds {limit} bytes.")

    @classmethod
    def unavailable(cls, message: str = "Storage is unavailable.") -> ApiError:
        return cls(503, "unavailable", message)


def error_body(code: str, message: str) -> bytes:
    return orjson.dumps({"error": code, "message": message})
