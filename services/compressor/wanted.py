"""Is an image's request still wanted? Asked before fetching, cheaply: one read per request every few seconds.

Work for a request that is not (any more) waiting for its images, such as a deleted one (DELETE
/requests/{id}), or one whose database was wiped while the broker kept its queue, is dropped with the
reason in the log. It costs one cached lookup per message, so it never holds a compressor slot that live work could use.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from shared.repository import RequestStatus

TTL_S = 5.0  # how long one answer is trusted: a request removed meanwhile costs at most this much work
MAX_ENTRIES = 10_000

# Why the images of a request in each status are not wanted; a status not listed (PENDING) wants them.
# A new status (CANCELLED, say) that should stop work adds its line here.
UNWANTED: dict[RequestStatus | None, str] = {
    None: "its request does not exist (removed, or left over from another run)",
    RequestStatus.RECEIVING: "its request was never accepted",
    RequestStatus.COMPLETED: "its request is complete: every image already has its outcome",
}


class RequestStatuses(Protocol):
    async def status_of(self, request_id: str) -> RequestStatus | None: ...


class WantedRequests:
    def __init__(
        self, repo: RequestStatuses, ttl: float = TTL_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.repo, self.ttl, self.clock = repo, ttl, clock
        self._answers: OrderedDict[str, tuple[float, str | None]] = OrderedDict()

    async def unwanted(self, request_id: str) -> str | None:
        """None while the request wants its images; otherwise the reason it does not."""
        now = self.clock()
        answer = self._answers.get(request_id)
        if answer is None or answer[0] <= now:
            reason = UNWANTED.get(await self.repo.status_of(request_id))
            answer = (now + self.ttl, reason)
            self._answers[request_id] = answer
            if len(self._answers) > MAX_ENTRIES:
                self._answers.popitem(last=False)
        self._answers.move_to_end(request_id)
        return answer[1]
