"""Fakes for tests of one handler at a time: the rest of the system is a publisher that remembers."""

from __future__ import annotations

from collections.abc import Iterable

from shared.events import Event


class RecordingPublisher:
    """Stands in for the EventBus: records what would have been published, in order."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    async def publish(self, event: Event) -> None:
        self.events.append(event)

    async def publish_many(self, events: Iterable[Event]) -> None:
        self.events.extend(events)
