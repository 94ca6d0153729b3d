"""The pooled HTTP clients a gateway owns: one set per runtime and event loop.

``HTTPClients`` holds the upstream pool of the built-in OpenAI-compatible provider
(``gateway._h1``: HTTP/1.1 on asyncio protocols, half the CPU of aiohttp a proxied
request) and the ``httpx.AsyncClient`` that handlers get from ``http_client()``
(httpx's API over an aiohttp pool: httpx's own degrades with concurrency). Each is made
on first use on a loop, and closed when the runtime shuts down or, failing that, when its loop
ends. An app's requests see their runtime's clients; library calls outside an app see
a process-wide default set with the default settings.
"""

from __future__ import annotations

import asyncio
import importlib.util
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._aio import running_loop
from ._context import current_runtime

if TYPE_CHECKING:
    import aiohttp
    import httpx

    from ._h1pool import Pool

__all__ = ["HTTPClients", "current", "http_client"]

# Set by gateway.tracing when traces are on: adds the current span's W3C traceparent to
# an upstream request's headers. None when off: one check per upstream call.
trace_headers: Callable[[dict[str, str]], None] | None = None


class _LoopClients:
    __slots__ = ("httpx", "keeper", "pool")

    def __init__(self) -> None:
        self.pool: Pool | None = None
        self.httpx: httpx.AsyncClient | None = None
        self.keeper: asyncio.Task[None] | None = None

    async def aclose(self) -> None:
        pool, client = self.pool, self.httpx
        self.pool = self.httpx = None
        if pool is not None:
            await pool.aclose()
        if client is not None:
            await client.aclose()


# Keeper tasks wait for their loop's end to close what was made on it. asyncio holds
# tasks weakly: this set keeps them (and through them the clients) alive until then.
_keepers: set[asyncio.Task[None]] = set()


def _setting(settings: Any, name: str, default: Any) -> Any:
    value = getattr(settings, name, None)
    return default if value is None else value


class HTTPClients:
    """The pooled HTTP clients of one runtime (limits and timeouts from its settings).

    ``settings`` is a ``gateway.config.UpstreamSettings`` (any object with its fields
    works; missing ones take the defaults).
    """

    def __init__(self, settings: Any = None) -> None:
        self.settings = settings
        self.max_connections = int(_setting(settings, "max_connections", 1000))
        self.max_keepalive = int(_setting(settings, "max_keepalive_connections", 100))
        self.keepalive_expiry = float(_setting(settings, "keepalive_expiry", 30.0))
        self.connect_timeout = float(_setting(settings, "connect_timeout", 5.0))
        self.read_timeout = float(_setting(settings, "read_timeout", 600.0))
        self.trust_env = bool(_setting(settings, "trust_env", False))
        self.http2 = bool(_setting(settings, "http2", False))
        self.max_response_bytes = int(_setting(settings, "max_response_bytes", 32 * 2**20))
        self.max_event_bytes = int(_setting(settings, "max_event_bytes", 4 * 2**20))
        # Set by an app that owns its process (the gateway command): the loop an aiohttp
        # session is made on starts its request writes eagerly (gateway/_pool.py).
        self.eager_writes = False
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopClients] = (
            weakref.WeakKeyDictionary()
        )
        # The last loop asked for and its entry: a server runs one loop, and a weak
        # dictionary look-up makes a weak reference each time (~0.3 us a request).
        self._hot: tuple[weakref.ref[asyncio.AbstractEventLoop], _LoopClients] | None = None

    def _entry(self) -> _LoopClients:
        try:
            loop = running_loop()
        except RuntimeError:
            raise RuntimeError(
                "gateway's HTTP clients need a running asyncio event loop (uvloop included)"
            ) from None
        hot = self._hot
        if hot is not None and hot[0]() is loop:
            return hot[1]
        entry = self._loops.get(loop)
        if entry is None:
            entry = self._loops[loop] = _LoopClients()
            keeper = loop.create_task(self._keep(loop, entry), name="gateway-http-clients")
            _keepers.add(keeper)
            keeper.add_done_callback(_keepers.discard)
            entry.keeper = keeper
        self._hot = (weakref.ref(loop), entry)
        return entry

    async def _keep(self, loop: asyncio.AbstractEventLoop, entry: _LoopClients) -> None:
        # asyncio.run() (and anyio.run, uvicorn, the sync library calls) cancel every
        # task still running when their loop ends: that is when lazily made clients close.
        try:
            await asyncio.Event().wait()
        finally:
            if self._loops.get(loop) is entry:
                del self._loops[loop]
            if self._hot is not None and self._hot[1] is entry:
                self._hot = None
            await entry.aclose()

    def upstream_pool(self) -> Pool:
        """The connection pool of the built-in OpenAI-compatible provider on this loop."""
        entry = self._entry()
        pool = entry.pool
        if pool is None or pool.closed:
            from ._h1pool import Pool

            # No cookie jar, no redirects followed: one tenant's upstream answer never
            # shapes another's call. The read timeout is both the wait for the first
            # byte and the idle gap between chunks; the whole request's deadline is the
            # caller's (the runner's timeout).
            pool = entry.pool = Pool(
                max_connections=self.max_connections,
                max_idle=self.max_keepalive,
                keepalive_expiry=self.keepalive_expiry,
                connect_timeout=self.connect_timeout,
                read_timeout=self.read_timeout,
                trust_env=self.trust_env,
            )
        return pool

    def http_client(self) -> httpx.AsyncClient:
        """The shared ``httpx.AsyncClient`` for handlers on this loop."""
        entry = self._entry()
        client = entry.httpx
        if client is None or client.is_closed:
            client = entry.httpx = _new_httpx_client(self)
        return client

    async def aclose(self) -> None:
        """Close the clients made on the running loop."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        entry = self._loops.pop(loop, None)
        if self._hot is not None and self._hot[1] is entry:
            self._hot = None
        if entry is not None:
            if entry.keeper is not None:
                entry.keeper.cancel()
            await entry.aclose()

    def pool_stats(self) -> dict[str, int]:
        """Upstream pool counts on this loop, for health checks and tests.

        ``active`` connections carry a request now; ``idle`` ones wait for reuse;
        ``waiting`` requests wait for a connection; ``requests`` is both.
        """
        entry = self._loops.get(asyncio.get_running_loop())
        if entry is None or entry.pool is None:
            return {"connections": 0, "idle": 0, "active": 0, "requests": 0, "waiting": 0}
        return entry.pool.stats()


def _new_session(clients: HTTPClients) -> aiohttp.ClientSession:
    import aiohttp

    from ._pool import CappedConnector, eager_request_writes

    if clients.eager_writes:
        eager_request_writes(running_loop())
    connector = CappedConnector(
        max_idle=clients.max_keepalive,
        limit=clients.max_connections,
        limit_per_host=0,
        keepalive_timeout=clients.keepalive_expiry,
        ttl_dns_cache=60,
        enable_cleanup_closed=False,
    )
    return aiohttp.ClientSession(
        connector=connector,
        # One jar for every tenant would carry one upstream's Set-Cookie into everybody's
        # later calls: keep none.
        cookie_jar=aiohttp.DummyCookieJar(),
        # connect covers the wait for a pooled connection and the connect itself;
        # sock_read is both the wait for the first byte and the idle gap between chunks.
        # The whole request's deadline is the caller's (the runner's timeout).
        timeout=aiohttp.ClientTimeout(
            total=None,
            connect=clients.read_timeout,
            sock_connect=clients.connect_timeout,
            sock_read=clients.read_timeout,
        ),
        trust_env=clients.trust_env,
        auto_decompress=True,
        raise_for_status=False,
    )


def _new_httpx_client(clients: HTTPClients) -> httpx.AsyncClient:
    import httpx
    from httpx_aiohttp import AiohttpTransport

    # httpx's API over an aiohttp pool of its own (not the provider's: a handler that
    # floods its backend must not starve the built-in upstream calls). Measured against
    # the fake upstream, requests/s at concurrency 1 / 8 / 32 / 64 on a loaded machine:
    # httpx's own pool 74 / 133 / 80 / 75, over aiohttp 96 / 279 / 354 / 355.
    limits = httpx.Limits(
        max_connections=clients.max_connections,
        max_keepalive_connections=clients.max_keepalive,
        keepalive_expiry=clients.keepalive_expiry,
    )
    transport: httpx.AsyncBaseTransport
    if clients.http2 and importlib.util.find_spec("h2") is not None:
        # aiohttp speaks HTTP/1.1 only: HTTP/2, when asked for, is httpx's own.
        transport = httpx.AsyncHTTPTransport(limits=limits, http2=True)
    else:
        transport = AiohttpTransport(client=_new_session(clients))
    return httpx.AsyncClient(
        transport=transport,
        # httpx's 5 s default read timeout is far too short for LLM calls.
        timeout=httpx.Timeout(
            connect=clients.connect_timeout,
            read=clients.read_timeout,
            write=clients.read_timeout,
            pool=clients.read_timeout,
        ),
        trust_env=clients.trust_env,
        follow_redirects=False,
    )


_default: HTTPClients | None = None


def _library_default() -> HTTPClients:
    global _default
    if _default is None:
        _default = HTTPClients()
    return _default


def current() -> HTTPClients:
    """The clients of the app serving this request, else the library's default set."""
    runtime = current_runtime.get()
    return runtime.http if runtime is not None else _library_default()


def http_client() -> httpx.AsyncClient:
    """A shared, pooled ``httpx.AsyncClient`` for handlers, one per event loop.

    Inside the gateway it belongs to the app: limits and timeouts come from
    ``gateway_settings.upstream``, and it is closed when the app shuts down. Use it
    as is and never close it; pass ``timeout=`` per request where needed::

        response = await gateway.http_client().post(url, json=payload)
    """
    return current().http_client()
