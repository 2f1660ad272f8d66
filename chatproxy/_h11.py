"""The h11 module the proxy drives: the compiled build when installed (the `fast` extra), else h11.

`h11-mypyc` is h11 compiled with mypyc, the same code and API under the name `h11_mypyc`; it cuts
the CPU time of parsing and framing by about a third. chatproxy never mixes the two: every module
takes its h11 from here.

A relayed head is made of fields h11 has just parsed and checked, plus a few the proxy writes
itself (Host, `Transfer-Encoding: chunked`, `Connection: close`). h11 would check every name and
value of them again with its regular expressions when the event is built; handing it the fields as
its own `Headers` (what its parser builds) skips that second check, about a tenth of the relay's
time. That is h11's internal form, so it is used only once a probe at import shows this build
of h11 producing the same bytes that way as through its public API; otherwise the public API is.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, List, Tuple

if TYPE_CHECKING:
    import h11  # the type checker reads plain h11's annotations: h11_mypyc has the same API
else:
    try:
        import h11_mypyc as h11
    except ImportError:
        import h11

Field = Tuple[bytes, bytes, bytes]  # (name as sent, lower-case name, value)


def fields_of(headers: Any) -> List[Field]:
    """The fields of a head h11 parsed (its `Headers`), names in both cases."""
    if TRUSTED_HEADERS is not None:
        return headers._full_items  # type: ignore[no-any-return]
    return [(raw, low, value) for (raw, value), (low, _) in zip(headers.raw_items(), headers)]


def request(method: bytes, target: bytes, fields: List[Field]) -> h11.Request:
    """A request to send whose fields were parsed by h11, or written by the proxy as valid ones."""
    if TRUSTED_HEADERS is not None:
        return h11.Request(method=method, target=target, headers=TRUSTED_HEADERS(fields), _parsed=True)
    return h11.Request(method=method, target=target, headers=[(raw, value) for raw, _, value in fields])


def response(status: int, fields: List[Field], reason: bytes) -> h11.Response:
    """A response to send whose fields were parsed by h11, or written by the proxy as valid ones."""
    if TRUSTED_HEADERS is not None:
        return h11.Response(status_code=status, headers=TRUSTED_HEADERS(fields), reason=reason, _parsed=True)
    return h11.Response(status_code=status, headers=[(raw, value) for raw, _, value in fields], reason=reason)


def _trusted_headers() -> Any:
    """h11's `Headers` class if building events from it gives what the public API gives, else None."""
    try:
        headers_class = importlib.import_module(h11.__name__ + "._headers").Headers
        pairs = [(b"Host", b"a"), (b"Content-Length", b"2"), (b"X-A", b"1")]
        fields = [(raw, raw.lower(), value) for raw, value in pairs]
        built = h11.Request(method=b"POST", target=b"/x", headers=headers_class(list(fields)), _parsed=True)
        public = h11.Request(method=b"POST", target=b"/x", headers=pairs)
        if built.headers.raw_items() != pairs or list(built.headers) != list(public.headers):
            return None
        if h11.Connection(h11.CLIENT).send(built) != h11.Connection(h11.CLIENT).send(public):
            return None
        parsed = h11.Connection(h11.SERVER)
        parsed.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\nX-B: 2\r\n\r\n")
        event = parsed.next_event()
        expected = [(b"Host", b"host", b"a"), (b"X-B", b"x-b", b"2")]
        if type(event) is not h11.Request or event.headers._full_items != expected:
            return None
        return headers_class
    except Exception:  # any other h11: its public API
        return None


TRUSTED_HEADERS = _trusted_headers()

__all__ = ["Field", "fields_of", "h11", "request", "response"]
