"""Is an image's request still wanted? Asked before fetching, cheaply: one read per request every second.

Work for a request that is not (any more) waiting for its images, such as a deleted one (DELETE
/requests/{id}), a cancelled one, or one whose database was wiped while the broker kept its queue, is
dropped with the reason in the log; an image of a request being cancelled is reported skipped (`skips`),
so that the request can settle. It costs one cached lookup per message, so it never holds a compressor
slot that live work could use.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from shared.repository import SKIPPED_REASON, RequestStatus

# How long one answer is trusted: a request cancelled or removed meanwhile starts new images for at most this
# long (a cancel is expected to stop work within about a second), at one read by id per request per second.
TTL_S = 1.0
MAX_ENTRIES = 10_000

# Why the images of a request in each status are not wanted; a status not listed (PENDING) wants them.
# A new status (CANCELLED, say) that should stop work adds its line here.
UNWANTED: dict[RequestStatus | None, str] = {
    None: "its request does not exist (removed, or left over from another run)",
    RequestStatus.RECEIVING: "its request was never accepted",
    RequestStatus.COMPLETED: "its request is complete: every image already has its outcome",
    RequestStatus.CANCELLING: SKIPPED_REASON,
    RequestStatus.CANCELLED: "its request was cancelled",
}
# Unwanted, yet still owed an outcome (SKIPPED), for its request to settle as CANCELLED.
SKIPPED = frozenset({RequestStatus.CANCELLING})


class RequestStatuses(Protocol):
    async def status_of(self, request_id: str) -> RequestStatus | None: ...


class WantedRequests:
    def __init__(
        self, repo: RequestStatuses, ttl: float = TTL_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.repo, self.ttl, self.clock = repo, ttl, clock
        self._answers: OrderedDict[str, tuple[float, RequestStatus | None]] = OrderedDict()

    async def unwanted(self, request_id: str) -> str | None:
        """None while the request wants its images; otherwise the reason it does not."""
        return UNWANTED.get(await self._status(request_id))

    async def skips(self, request_id: str) -> bool:
        """Whether an unwanted image of this request is still to be reported, as SKIPPED."""
        return await self._status(request_id) in SKIPPED

    async def _status(self, request_id: str) -> RequestStatus | None:
        now = self.clock()
        answer = self._answers.get(request_id)
        if answer is None or answer[0] <= now:
            answer = (now + self.ttl, await self.repo.status_of(request_id))
            self._answers[request_id] = answer
            if len(self._answers) > MAX_ENTRIES:
                self._answers.popitem(last=False)
        self._answers.move_to_end(request_id)
        return answer[1]
