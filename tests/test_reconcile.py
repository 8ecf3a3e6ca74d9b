"""The engine's reconcile loop (netconf_core.reconcile), on a real event loop with small
periods: coalescing, period, back-off growth, cap and reset, stop during a pass, reporting."""
import asyncio

import pytest

from netconf_core import ReconcileLoop


class Flaky(Exception):
    pass


class Recorder:
    """A reconcile function that records when each pass started, and fails while told to."""

    def __init__(self, fail: int = 0, hold: asyncio.Event | None = None, again: float | None = None):
        self.starts: list[float] = []
        self.fail = fail  # passes left to fail
        self.hold = hold  # a pass waits for it when given
        self.again = again
        self.entered = asyncio.Event()
        self.on_start = lambda: None

    async def __call__(self):
        self.on_start()
        self.starts.append(asyncio.get_running_loop().time())
        self.entered.set()
        if self.hold is not None:
            await self.hold.wait()
        if self.fail > 0:
            self.fail -= 1
            raise Flaky(f"failure {len(self.starts)}")
        return self.again


async def until(predicate, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


def test_a_burst_of_wakes_is_one_pass():
    async def scenario():
        passes = Recorder()
        loop = ReconcileLoop("burst", passes, debounce=0.02)
        loop.start()
        try:
            for _ in range(50):
                loop.wake()
                await asyncio.sleep(0)
            async with asyncio.timeout(5):
                await loop.idle()
            assert len(passes.starts) == 1
            loop.wake()
            async with asyncio.timeout(5):
                await until(lambda: len(passes.starts) == 2)
        finally:
            await loop.stop()
    asyncio.run(scenario())


def test_wakes_during_a_pass_fold_into_one_more_pass():
    async def scenario():
        hold = asyncio.Event()
        passes = Recorder(hold=hold)
        loop = ReconcileLoop("during", passes)
        loop.wake()  # before start: the first pass runs once the loop starts
        loop.start()
        try:
            await passes.entered.wait()
            for _ in range(10):
                loop.wake()
            hold.set()
            await until(lambda: len(passes.starts) == 2)
            await loop.idle()
            await asyncio.sleep(0.05)
            assert len(passes.starts) == 2
            assert loop.passes == 2 and loop.failures == 0 and loop.last_success is not None
        finally:
            await loop.stop()
    asyncio.run(scenario())


def test_the_period_runs_a_pass_without_wakes():
    async def scenario():
        passes = Recorder()
        loop = ReconcileLoop("period", passes, period=0.05)
        loop.start()
        try:
            await until(lambda: len(passes.starts) >= 3)
            gaps = [b - a for a, b in zip(passes.starts, passes.starts[1:])]
            assert all(gap >= 0.045 for gap in gaps), gaps
        finally:
            await loop.stop()
    asyncio.run(scenario())


def test_without_a_period_nothing_runs_until_woken():
    async def scenario():
        passes = Recorder()
        loop = ReconcileLoop("idle", passes)
        loop.start()
        try:
            await asyncio.sleep(0.1)
            assert passes.starts == []
        finally:
            await loop.stop()
    asyncio.run(scenario())


def test_a_pass_returning_a_delay_runs_again_after_it():
    async def scenario():
        passes = Recorder(again=0.03)
        loop = ReconcileLoop("again", passes)
        loop.wake()
        loop.start()
        try:
            await until(lambda: len(passes.starts) >= 3)
            assert passes.starts[2] - passes.starts[1] >= 0.025
        finally:
            await loop.stop()
    asyncio.run(scenario())


def test_failures_back_off_doubling_up_to_the_cap_and_reset_on_success():
    async def scenario():
        passes = Recorder(fail=5)
        loop = ReconcileLoop("backoff", passes, backoff_initial=0.02, backoff_cap=0.08, expected=(Flaky,))
        delays = []  # the back-off that each pass came after
        passes.on_start = lambda: delays.append(loop.retry_delay)
        loop.wake()
        loop.start()
        try:
            await until(lambda: len(passes.starts) == 6)  # five failures, then a success
            assert delays == [None, 0.02, 0.04, 0.08, 0.08, 0.08]
            gaps = [b - a for a, b in zip(passes.starts, passes.starts[1:])]
            assert all(gap >= delay * 0.9 for gap, delay in zip(gaps, delays[1:])), gaps  # it did wait
            await until(lambda: loop.last_success is not None)
            assert loop.failures == 0 and loop.last_error is None and loop.retry_delay is None
            # Reset: the next failure waits the initial back-off again, not the cap.
            passes.fail = 1
            loop.wake()
            await until(lambda: len(passes.starts) == 8)
            assert delays[6:] == [None, 0.02]
        finally:
            await loop.stop()
    asyncio.run(scenario())


def test_errors_are_reported_until_a_success():
    async def scenario():
        passes = Recorder(fail=2)
        loop = ReconcileLoop("report", passes, backoff_initial=None, expected=(Flaky,))
        loop.start()
        try:
            loop.wake()
            await until(lambda: loop.passes == 1)
            await loop.idle()
            assert loop.failures == 1 and isinstance(loop.last_error, Flaky) and loop.last_success is None
            await asyncio.sleep(0.05)
            assert loop.passes == 1  # no back-off: nothing runs until the next wake
            loop.wake()
            await until(lambda: loop.passes == 2)
            await loop.idle()
            assert loop.failures == 2 and str(loop.last_error) == "failure 2"
            loop.wake()
            await until(lambda: loop.passes == 3)
            await loop.idle()
            assert loop.failures == 0 and loop.last_error is None and loop.last_success is not None
        finally:
            await loop.stop()
    asyncio.run(scenario())


def test_an_unexpected_error_does_not_end_the_loop(caplog):
    async def scenario():
        async def broken():
            raise KeyError("bug")
        loop = ReconcileLoop("bug", broken, backoff_initial=None)
        loop.start()
        try:
            loop.wake()
            await until(lambda: loop.passes == 1)
            loop.wake()
            await until(lambda: loop.passes == 2)
            assert loop.running and isinstance(loop.last_error, KeyError)
        finally:
            await loop.stop()
    asyncio.run(scenario())
    assert "Traceback" in caplog.text or any(r.exc_info for r in caplog.records)


def test_stop_during_a_pass_cancels_it_and_waits_for_it():
    async def scenario():
        cleaned = asyncio.Event()

        async def slow():
            try:
                await asyncio.sleep(10)
            finally:
                cleaned.set()
        loop = ReconcileLoop("stop", slow, period=0.01)
        loop.start()
        await until(lambda: loop.passes == 1)
        async with asyncio.timeout(2):
            await loop.stop()
        assert cleaned.is_set() and not loop.running
        assert loop.failures == 0  # a cancelled pass is not a failure
    asyncio.run(scenario())


def test_stop_cancels_pending_retries():
    async def scenario():
        passes = Recorder(fail=1)
        loop = ReconcileLoop("retry", passes, backoff_initial=0.05)
        loop.wake()
        loop.start()
        await until(lambda: len(passes.starts) == 1)
        await loop.stop()
        await asyncio.sleep(0.1)
        assert len(passes.starts) == 1 and not loop.running
    asyncio.run(scenario())


@pytest.mark.parametrize("debounce", [0.0, 0.02])
def test_idle_waits_for_the_pass_a_wake_asked_for(debounce):
    async def scenario():
        passes = Recorder()
        loop = ReconcileLoop("idle", passes, debounce=debounce)
        loop.start()
        try:
            loop.wake()
            async with asyncio.timeout(5):
                await loop.idle()
            assert len(passes.starts) == 1
        finally:
            await loop.stop()
    asyncio.run(scenario())
