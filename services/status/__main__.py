"""Status service: projects image outcomes into the read model and publishes RequestCompleted."""

from __future__ import annotations

from services.status.projection import ROUTES, StatusProjection
from shared.bus import bind
from shared.runtime import Runtime, main


async def start(rt: Runtime) -> None:
    projection = StatusProjection(rt.repo, rt.bus)
    rt.spawn(projection.sweep_forever(), "completion-sweeper")
    await rt.bus.subscribe("status", bind(ROUTES, projection), prefetch=32, on_parked=projection.on_parked)


if __name__ == "__main__":
    main("status", start)
