"""`/metrics`, `/healthz` and `/readyz` on a service's own port (contract §6).

Ready means every registered check passes right now (NATS connected; the Hub reachable where the
stage needs it). A check is a cheap callable that reads state the stage keeps current; it must not
do I/O of its own, so a probe storm cannot hurt the service.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from botburrow.runtime.http import RunningServer, serve

Check = Callable[[], bool]


class Health:
    def __init__(self, service: str) -> None:
        self.service = service
        self.checks: dict[str, Check] = {}

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
            return JSONResponse({"service": self.service, "ready": ready, "checks": checks},
                                status_code=200 if ready else 503)

        async def metrics(_: Request) -> Response:
            return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

        return Starlette(routes=[Route("/healthz", healthz), Route("/readyz", readyz), Route("/metrics", metrics)])

    async def serve(self, port: int, host: str = "0.0.0.0") -> RunningServer:
        return await serve(self.app(), host=host, port=port)
