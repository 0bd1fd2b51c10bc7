"""The one classification of failures that decides what happens to a message: retried until it works, or
counted towards parking.

`Unavailable` means that something a handler needs cannot be had right now: the database or the broker is
unreachable or not answering, or another copy of the same message holds the claim on its effect. It says
nothing about the message itself, so the bus retries it with backoff for as long as it takes and never
parks it for this. Anything else a handler raises is a failure of the message: retried a few times, then
parked (see shared/bus.py). Adapters raise subclasses: `StorageUnavailable` (shared/mongo.py),
`BrokerUnavailable` (shared/bus.py), `ClaimHeld` (a side effect someone else is performing).
"""

from __future__ import annotations


class Unavailable(Exception):
    """Try again later: a dependency is down or busy. Never a reason to give up on a message."""


class ClaimHeld(Unavailable):
    """Another copy of this message is performing its side effect right now (its claim has not expired)."""
