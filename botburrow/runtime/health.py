"""`/metrics`, `/healthz` and `/readyz` on a service's own port (contract §6).

Ready means every registered check passes right now (NATS connected; the Hub reachable where the
stage needs it). A check is a cheap callable that reads state the stage keeps current; it must not
do I/O of its own, so a probe storm cannot hurt the service. A detail (`add_detail`) is shown beside the
checks and never decides readiness (ingest's Hub capabilities). A stage may serve its own routes on the
same port (`add_route`: ingest's inbox hook).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from botburrow.runtime.http import RunningServer, serve

Check = Callable[[], bool]


class Health:
    def __init__(self, service: str) -> None:
        self.service = service
        self.checks: dict[str, Check] = {}
        self.details: dict[str, Callable[[], Any]] = {}
        self._app: Starlette | None = None

    def add_detail(self, name: str, detail: Callable[[], Any]) -> None:
        """Shown under `details` in /readyz (JSON-able, cheap, no I/O); never decides readiness."""
        self.details[name] = detail

    def add_route(self, route: Route) -> None:
        """Serve `route` on this port from now on, in place of an earlier route of the same path."""
        app = self._app or self.app()
        app.router.routes[:] = [r for r in app.router.routes if getattr(r, "path", None) != route.path] + [route]

    def add_check(self, name: str, check: Check) -> None:
        self.checks[name] = check

    def remove_check(self, name: str, check: Check) -> None:
        """Drop `name` if it is still `check` (a later task of the same name may have replaced it)."""
        if self.checks.get(name) is check:
            del self.checks[name]

    def status(self) -> dict[str, bool]:
        results = {}
        for name, check in self.checks.items():
            try:
                results[name] = bool(check())
            except Exception:
                results[name] = False
        return results

    def app(self) -> Starlette:
        async def healthz(_: Request) -> Response:
            return JSONResponse({"service": self.service, "alive": True})

        async def readyz(_: Request) -> Response:
            checks = self.status()
            ready = all(checks.values())
            body: dict[str, Any] = {"service": self.service, "ready": ready, "checks": checks}
            if self.details:
                body["details"] = {name: _shown(detail) for name, detail in self.details.items()}
            return JSONResponse(body, status_code=200 if ready else 503)

        async def metrics(_: Request) -> Response:
            return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

        if self._app is None:
            routes: list[BaseRoute] = [Route("/healthz", healthz), Route("/readyz", readyz),
                                       Route("/metrics", metrics)]
            self._app = Starlette(routes=routes)
        return self._app

    async def serve(self, port: int, host: str = "0.0.0.0") -> RunningServer:
        return await serve(self.app(), host=host, port=port)


def _shown(detail: Callable[[], Any]) -> Any:
    try:
        return detail()
    except Exception:  # a detail never breaks the readiness answer
        return None
