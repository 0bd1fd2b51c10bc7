"""The read model's conditional updates against the real database: claims, and an upload's certain outcome."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from shared.mongo import Mongo
from shared.repository import Claim, MongoRequestRepository, RequestStatus, RowDoc
from tests.fakes import an_upload

UPLOAD = an_upload()
ROW = RowDoc(serial="1", name="A", urls=["http://o/a.jpg"], cells=["1", "A", "http://o/a.jpg"])


async def stored(repo: MongoRequestRepository, request_id: str) -> None:
    await repo.add_rows(request_id, 0, 0, [ROW])
    await repo.create_request(request_id, UPLOAD)


async def test_of_twenty_concurrent_claims_on_one_channel_exactly_one_wins(
    repo: MongoRequestRepository,
) -> None:
    await stored(repo, "r1")
    await repo.accept_request("r1")
    lease = timedelta(minutes=5)
    claims = await asyncio.gather(
        *(repo.claim_notification("r1", "n1", "email", f"copy-{i}", lease) for i in range(20))
    )
    assert sorted(claims).count(Claim.CLAIMED) == 1 and claims.count(Claim.HELD) == 19
    # Another channel, or another notification, is a claim of its own.
    assert await repo.claim_notification("r1", "n1", "webhook", "x", lease) is Claim.CLAIMED
    assert await repo.claim_notification("r1", "n2", "email", "x", lease) is Claim.CLAIMED

    await repo.mark_notified("r1", "n1", "email", ok=True)
    assert await repo.claim_notification("r1", "n1", "email", "late", lease) is Claim.DONE
    request = await repo.get("r1")
    assert request is not None and "email" not in request["sending"]["n1"]


async def test_a_lapsed_claim_is_taken_over(repo: MongoRequestRepository) -> None:
    await stored(repo, "r1")
    assert await repo.claim_notification("r1", "n1", "email", "died", timedelta(seconds=-1)) is Claim.CLAIMED
    assert await repo.claim_notification("r1", "n1", "email", "next", timedelta(minutes=1)) is Claim.CLAIMED
    assert await repo.claim_notification("r1", "n1", "email", "third", timedelta(minutes=1)) is Claim.HELD


async def test_an_upload_is_invisible_until_accepted(repo: MongoRequestRepository) -> None:
    await stored(repo, "r1")
    assert await repo.status_of("r1") is RequestStatus.RECEIVING
    assert [r async for r in repo.outbox_pending()] == []
    accepted = await repo.accept_request("r1")
    assert accepted is not None and accepted["status"] == RequestStatus.PENDING
    assert [r["_id"] async for r in repo.outbox_pending()] == ["r1"]


async def test_settling_a_failed_upload_is_certain_and_fences_off_a_late_accept(
    repo: MongoRequestRepository, mongo: Mongo
) -> None:
    await stored(repo, "r1")
    assert await repo.settle_upload("r1") is False
    assert await repo.accept_request("r1") is None, "an accept that lands after settling changes nothing"
    assert await repo.get("r1") is None
    assert await mongo.rows.count_documents({"request_id": "r1"}) == 0
    assert await repo.settle_upload("never-stored") is False


async def test_an_upload_whose_accept_landed_is_settled_as_accepted(repo: MongoRequestRepository) -> None:
    await stored(repo, "r1")
    await repo.accept_request("r1")  # landed, but say its reply was lost
    assert await repo.settle_upload("r1") is True
    assert await repo.status_of("r1") is RequestStatus.PENDING


async def test_abandoned_uploads_are_those_left_receiving(repo: MongoRequestRepository) -> None:
    await stored(repo, "r1")
    await stored(repo, "r2")
    await repo.accept_request("r2")
    assert [r async for r in repo.abandoned_uploads(timedelta(0))] == ["r1"]
    assert [r async for r in repo.abandoned_uploads(timedelta(minutes=5))] == []
