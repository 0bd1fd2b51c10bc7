"""Each service's routing table: every handler takes exactly the event type it is routed."""

from __future__ import annotations

import typing

import pytest

from services.compressor.handler import ROUTES as COMPRESSOR
from services.notifier.handler import ROUTES as NOTIFIER
from services.status.projection import ROUTES as STATUS
from shared.bus import HandlerMethods


@pytest.mark.parametrize("routes", [COMPRESSOR, STATUS, NOTIFIER], ids=["compressor", "status", "notifier"])
def test_each_handler_accepts_the_event_type_it_is_routed(routes: HandlerMethods) -> None:
    for event_type, method in routes.items():
        hints = typing.get_type_hints(method)
        accepted = hints["event"]
        options = typing.get_args(accepted) or (accepted,)
        assert event_type in options, f"{method.__qualname__} takes {accepted}, not {event_type.__name__}"
