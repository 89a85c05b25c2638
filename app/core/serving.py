"""The application class: FastAPI, with the hot paths served ahead of its middleware stack.

The checks and the consent changes are most of the traffic. On every other route a request
passes through FastAPI's and Starlette's layers (the server-error and exception middleware,
FastAPI's telemetry and body-limit middleware, an exit stack, the router, the route's own
exception wrapper); on these it goes straight from the server to the endpoint, and that stack
had been a third of a check's time (BENCHMARKS.md). What the layers did for these routes is done
here in their stead:

- the route is matched by Starlette's own ``Route.matches`` (path, path parameters, method;
  any other method on the path goes on to the router and gets its 405);
- an exception from the endpoint is answered by the handler the application registered for it
  (``app.core.errors``), found as Starlette finds it (the nearest class in the exception's MRO),
  so every error body and status is the one the rest of the service gives.

Two differences, both deliberate: FastAPI's native OpenTelemetry instrumentation does not see
these routes, and an unexpected error on them is logged once, by the service's own handler, not
a second time by the server.
"""

from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.routing import Match, Route
from starlette.types import Receive, Scope, Send


class ConsentLedgerAPI(FastAPI):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # Served ahead of the stack, first match wins; each a ``Route`` whose endpoint takes
        # the request and returns the response.
        self.hot_routes: list[Route] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if self.root_path:
                scope["root_path"] = self.root_path
            for route in self.hot_routes:
                match, child_scope = route.matches(scope)
                if match is Match.FULL:
                    scope.update(child_scope)
                    await self._serve(route, scope, receive, send)
                    return
        await super().__call__(scope, receive, send)

    async def _serve(self, route: Route, scope: Scope, receive: Receive, send: Send) -> None:
        scope["app"] = self
        request = Request(scope, receive)
        try:
            response = await route.endpoint(request)
        except Exception as exc:
            response = await self._handler(exc)(request, exc)
        await response(scope, receive, send)

    def _handler(self, exc: Exception) -> Any:
        """The exception handler registered for the nearest class of ``exc``."""
        handlers = self.exception_handlers
        for cls in type(exc).__mro__:
            if cls in handlers:
                return handlers[cls]
        raise exc  # pragma: no cover - app.core.errors registers one for Exception
