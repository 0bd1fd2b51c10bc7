"""Per-host fairness in the compressor: the concurrency limit and the circuit breaker, on a fake clock."""

from __future__ import annotations

import asyncio

import pytest

from services.compressor.hosts import CircuitBreakers, HostLimiter, HostSaturated, HostUnresponsive, origin_of

HOST = "http://dead.example:80"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_origins_tell_ports_apart_and_ignore_case_and_paths() -> None:
    assert origin_of("HTTP://Img.Example.com/a.jpg?x=1") == "http://img.example.com:80"
    assert origin_of("https://img.example.com/b.jpg") == "https://img.example.com:443"
    assert origin_of("http://127.0.0.1:8001/a") != origin_of("http://127.0.0.1:8002/a")


async def test_a_host_gets_at_most_its_slots_and_a_waiter_gets_one_as_it_frees() -> None:
    limiter = HostLimiter(per_host=2, wait=0.5)
    async with limiter.slot(HOST), limiter.slot(HOST):
        assert limiter.active(HOST) == 2
        async with limiter.slot("http://other.example:80"):  # another host is not affected
            pass

    short = HostLimiter(per_host=1, wait=0.01)
    async with short.slot(HOST):
        with pytest.raises(HostSaturated):
            async with short.slot(HOST):
                pass

    held = asyncio.Event()

    async def hold_briefly() -> None:
        async with limiter.slot(HOST), limiter.slot(HOST):
            held.set()
            await asyncio.sleep(0.05)

    holder = asyncio.create_task(hold_briefly())
    await held.wait()
    async with limiter.slot(HOST):  # waits for one of them to free up, within `wait`
        assert limiter.active(HOST) <= 2
    await holder
    assert limiter.active(HOST) == 0


def test_the_breaker_opens_after_repeated_failures_and_fails_fast_with_a_reason() -> None:
    clock = Clock()
    breakers = CircuitBreakers(failures_to_open=3, cooldown=30, clock=clock)
    for _ in range(2):
        breakers.failed(HOST)
        breakers.check(HOST)  # not yet
    breakers.failed(HOST)
    with pytest.raises(HostUnresponsive) as info:
        breakers.check(HOST)
    assert info.value.reason.startswith("host unresponsive: dead.example:80")
    assert "3 times in a row" in info.value.reason
    breakers.check("http://alive.example:80")  # other hosts are not affected


def test_a_success_resets_the_count() -> None:
    breakers = CircuitBreakers(failures_to_open=2, cooldown=30, clock=Clock())
    breakers.failed(HOST)
    breakers.succeeded(HOST)
    breakers.failed(HOST)
    breakers.check(HOST)
    assert not breakers.is_open(HOST)


def opened_once(clock: Clock) -> CircuitBreakers:
    breakers = CircuitBreakers(failures_to_open=1, cooldown=30, trial_timeout=60, clock=clock)
    breakers.failed(HOST)
    return breakers


def test_after_the_cooldown_one_trial_goes_through_and_its_result_decides() -> None:
    clock = Clock()
    breakers = opened_once(clock)
    clock.now += 29
    with pytest.raises(HostUnresponsive):
        breakers.check(HOST)
    clock.now += 1
    breakers.check(HOST)  # half-open: the trial
    with pytest.raises(HostUnresponsive):
        breakers.check(HOST)  # only one trial at a time
    breakers.failed(HOST)  # the trial failed: open again, for a whole new cooldown
    clock.now += 29
    with pytest.raises(HostUnresponsive):
        breakers.check(HOST)
    clock.now += 1
    breakers.check(HOST)
    breakers.succeeded(HOST)  # the trial got an answer: closed
    breakers.check(HOST)
    breakers.check(HOST)
    assert not breakers.is_open(HOST)


def test_a_trial_that_never_reports_back_does_not_block_the_host_forever() -> None:
    clock = Clock()
    breakers = opened_once(clock)
    clock.now += 30
    breakers.check(HOST)  # the trial's task is cancelled and never reports
    clock.now += 60
    breakers.check(HOST)  # another trial
