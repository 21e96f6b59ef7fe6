"""The bridge's HTTP endpoints on its own event loop: /livez, /readyz and /metrics."""

from __future__ import annotations

from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from celery_kafka_bridge.errors import ConfigError


class Registered(Protocol):
    """Has the registry /metrics exports (the bridge's and the materializer's metrics)."""

    @property
    def registry(self) -> CollectorRegistry: ...


class Readiness(Protocol):
    """Answers /readyz from cached checks, never blocking on a broker."""

    def status(self) -> tuple[bool, dict[str, Any]]: ...


async def serve(port: int, metrics: Registered, health: Readiness) -> web.AppRunner:
    """Start serving on every interface; the caller stops it with ``await runner.cleanup()``."""

    async def livez(_: web.Request) -> web.Response:
        # Answered by the event loop itself: proof enough that the process is not wedged.
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        ready, checks = health.status()
        return web.json_response({"ready": ready, **checks}, status=200 if ready else 503)

    async def metrics_page(request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encoder(metrics.registry), headers={"Content-Type": content_type})

    app = web.Application()
    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, port=port).start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(
            f"invalid setting BRIDGE_HTTP_PORT: cannot listen on {port}: {exc.strerror}"
        ) from exc
    return runner
