"""The proxy's own failures and the OpenAI-style error bodies the client gets for them."""

from __future__ import annotations

import json


class ProxyError(Exception):
    """A failure the proxy answers itself, with `status` and an OpenAI-style JSON body."""

    status = 502
    code = "upstream_error"


class UpstreamConnectError(ProxyError):
    code = "upstream_unreachable"


class UpstreamTimeout(ProxyError):
    status = 504
    code = "upstream_timeout"


class UpstreamProtocolError(ProxyError):
    code = "upstream_bad_response"


class UpstreamClosed(ProxyError):
    code = "upstream_closed"


class RequestRejected(ProxyError):
    """The client's request is refused before anything is sent upstream (400, 401, 413, …)."""

    code = "request_rejected"

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def openai_error_body(status: int, message: str, code: str) -> bytes:
    """The error shape the OpenAI SDKs parse: {"error": {"message", "type", "code", "param"}}."""
    error = {"message": message, "type": "proxy_error", "code": code, "param": None, "status": status}
    return json.dumps({"error": error}).encode()
