"""The application class: FastAPI, with the hot paths served ahead of most of its stack.

The checks and the consent changes are most of the traffic. On every other route a request
passes through FastAPI's telemetry and body-limit middleware, an exit stack, the router (every
route's pattern in turn), the route's own wrapper and a second exception wrapper; on these it
goes from Starlette's two error-handling middlewares straight to the endpoint, and the layers
skipped had been a third of a check's time (BENCHMARKS.md, step 15):

- the route is matched by Starlette's own ``Route.matches`` (path, path parameters, method);
  another method on the path, HEAD included, goes on to the router, which answers 405;
- errors are Starlette's own ``ExceptionMiddleware`` and ``ServerErrorMiddleware`` with the
  handlers the application registered (``app.core.errors``), built as FastAPI builds them, so
  every error, and every failure of an error handler, is answered as on any other route.

What the hot routes do not get, by design: middleware added to the application, FastAPI's
OpenTelemetry instrumentation, its ``max_body_size`` (none is set), dependency overrides and
router dependencies (the endpoints take no dependencies), and a body kept on the request: it is
read once, by ``app.core.schemas.received``, and nothing after may read it again.
"""

from typing import Any

import httpx
from fastapi import FastAPI
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.requests import Request
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

# A path no route of the application takes (``ConsentLedgerAPI.route_once``).
ROUTED_NOWHERE = "/.consent-ledger/start-up"


async def _endpoint(scope: Scope, receive: Receive, send: Send) -> None:
    """The matched route's endpoint (``Route.matches`` puts it in the scope) as an ASGI app."""
    response = await scope["endpoint"](Request(scope, receive, send))
    await response(scope, receive, send)


class ConsentLedgerAPI(FastAPI):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # Served ahead of the stack, the first match wins; each a ``Route`` whose endpoint
        # takes the request and returns the response.
        self.hot_routes: list[Route] = []
        self._hot_stack: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] != "HEAD":
            if self.root_path:
                scope["root_path"] = self.root_path
            for route in self.hot_routes:
                match, child_scope = route.matches(scope)
                if match is Match.FULL:
                    scope.update(child_scope)
                    scope["app"] = self
                    if self._hot_stack is None:  # once the handlers are in, as for the stack
                        self._hot_stack = self._error_handling(_endpoint)
                    await self._hot_stack(scope, receive, send)
                    return
        await super().__call__(scope, receive, send)

    async def route_once(self) -> None:
        """Match one request against every route, answered 404, so that FastAPI builds its
        routes' dependencies, parameters and models now: it builds an included router's the
        first time a request is matched against them, on the event loop, and the checks,
        served ahead of the router, never are.
        Left to the first request on any other route, that held a worker's loop for ~40 ms
        with every check in flight waiting (BENCHMARKS.md, step 30). Call it before the
        application's lasting objects are frozen (``app.main.steady_collector``)."""
        transport = httpx.ASGITransport(app=self)
        async with httpx.AsyncClient(transport=transport, base_url="http://start-up") as client:
            await client.get(ROUTED_NOWHERE)

    def _error_handling(self, app: ASGIApp) -> ASGIApp:
        """``app`` inside the two error-handling middlewares of FastAPI's own stack, given the
        application's handlers as ``FastAPI.build_middleware_stack`` gives them."""
        error_handler = None
        handlers: dict[Any, Any] = {}
        for key, value in self.exception_handlers.items():
            if key in (500, Exception):
                error_handler = value
            else:
                handlers[key] = value
        return ServerErrorMiddleware(
            ExceptionMiddleware(app, handlers=handlers, debug=self.debug),
            handler=error_handler,
            debug=self.debug,
        )
