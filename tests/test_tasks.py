"""Tests for smagent.tasks: a step once begun finishes even when its caller is cancelled."""

from __future__ import annotations

import asyncio

import pytest

from smagent.tasks import finish_even_if_cancelled


async def _step(seconds: float, done: list[str], result: str = "ok") -> str:
    await asyncio.sleep(seconds)
    done.append(result)
    return result


async def test_the_result_is_returned_when_nothing_cancels() -> None:
    """Without a cancellation it is a plain await."""
    done: list[str] = []
    assert "ok" == await finish_even_if_cancelled(_step(0, done))
    assert ["ok"] == done


async def test_a_cancelled_caller_lets_the_step_finish_then_is_cancelled() -> None:
    """Cancelling the caller mid-step: the step runs to its end, then the caller gets
    CancelledError (the cancellation is delayed, not lost)."""
    done: list[str] = []
    started = asyncio.Event()

    async def caller() -> str:
        started.set()
        return await finish_even_if_cancelled(_step(0.2, done))

    task = asyncio.create_task(caller())
    await started.wait()
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ["ok"] == done


async def test_repeated_cancellations_still_let_the_step_finish() -> None:
    """SIGTERM then SIGINT (two cancellations) do not cut the step short either."""
    done: list[str] = []
    task = asyncio.create_task(finish_even_if_cancelled(_step(0.2, done)))
    for _ in range(3):
        await asyncio.sleep(0.03)
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ["ok"] == done


async def test_a_timeout_around_it_waits_for_the_step_then_times_out() -> None:
    """`asyncio.timeout` expiring mid-step: the step finishes, then TimeoutError (the
    cancellation is re-raised as the timeout's own, not swallowed)."""
    done: list[str] = []
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await finish_even_if_cancelled(_step(0.2, done))
    assert ["ok"] == done


async def test_an_error_of_the_step_reaches_the_caller() -> None:
    """The step's own exception is raised to the caller."""

    async def broken() -> None:
        await asyncio.sleep(0)
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        await finish_even_if_cancelled(broken())


async def test_a_step_cancelled_by_itself_cancels_the_caller() -> None:
    """A step whose own task is cancelled (not the caller) raises CancelledError at once."""

    async def gives_up() -> None:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        await asyncio.sleep(1)

    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(finish_even_if_cancelled(gives_up()), 2)
