"""Connection-level limits uvicorn does not set: a client that opens a connection and sends
its request headers slowly, or never finishes them, holds a socket and a protocol object for
as long as it likes (uvicorn's keep-alive timeout runs only between requests). Enough such
clients exhaust file descriptors with no key and no request. :class:`BoundedHeadersProtocol`
closes a connection whose request headers are not complete within ``header_timeout_s`` of
the connection opening or of the previous response; bodies have their own timeout in the
app (``ProxySettings.body_timeout_s``).
"""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

#: seconds a client has to send a request's headers (Elasticsearch's own HTTP layer has no
#: such limit, but it is not meant to face the open network either)
DEFAULT_HEADER_TIMEOUT_S = 10.0


class BoundedHeadersProtocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's headers."""

    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        self._arm_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        if getattr(self, "_header_timer", None) is not None:
            self._header_timer.cancel()  # type: ignore[union-attr]
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_overdue)

    def _headers_overdue(self) -> None:
        """Close the connection if the client is still sending a request's headers (h11 has
        not seen a complete request line and headers since the timer was armed)."""
        self._header_timer = None
        waiting = self.conn.their_state is h11.IDLE and (
            self.cycle is None or self.cycle.response_complete
        )
        if waiting and not self.transport.is_closing():
            self.transport.close()


def protocol_with_header_timeout(seconds: float) -> type[BoundedHeadersProtocol]:
    """A :class:`BoundedHeadersProtocol` subclass with ``seconds`` as its header deadline
    (uvicorn takes a protocol class, not an instance)."""
    return type("BoundedHeadersProtocol", (BoundedHeadersProtocol,), {"header_timeout_s": seconds})
