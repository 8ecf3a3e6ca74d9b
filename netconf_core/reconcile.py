"""One reconcile loop for every level.

A `ReconcileLoop` runs `reconcile()` (async, no arguments) in a task of its own, one pass at
a time. It is level-triggered: a pass reads the world as it is and writes only the
difference, so what wakes it carries no data and a burst of wakes is one pass:

- `wake()` asks for a pass; wakes that come before a pass starts (and within `debounce`
  seconds of the first) are folded into it, those that come while it runs into the next one;
- with `period`, a pass also runs when `period` seconds have passed without one starting;
- a pass that returns a number asks for another pass after that many seconds (work in
  progress), as `wake_after` does;
- a pass that raises is logged and tried again after a back-off that starts at
  `backoff_initial`, doubles per failure in a row up to `backoff_cap`, and is forgotten
  at the first success (`backoff_initial=None`: no retry, the next wake or period tries);
  exceptions of `expected` types are logged in one line, others with their traceback.

`failures` (failures in a row), `last_error`, `retry_delay` (the back-off now running) and
`last_success` (loop time) are there for a level's conditions and status; `idle()` waits until no pass runs and none is asked for.
`stop()` cancels a pass in progress and waits for it to end. Timers use `asyncio.timeout`,
never `asyncio.wait_for` (whose cancellation can be lost, see commit 15e2bcf).
"""
from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

log = logging.getLogger(__name__)

Reconcile = Callable[[], Awaitable["float | None"]]


class ReconcileLoop:
    def __init__(self, name: str, reconcile: Reconcile, *, period: float | None = None, debounce: float = 0.0,
                 backoff_initial: float | None = 1.0, backoff_cap: float = 30.0,
                 expected: tuple[type[BaseException], ...] = (), logger: logging.Logger | None = None):
        self.name = name
        self.reconcile = reconcile
        self.period = period
        self.debounce = debounce
        self.backoff_initial = backoff_initial
        self.backoff_cap = backoff_cap
        self.expected = expected
        self.log = logger or log
        self.passes = 0                       # passes run, failed or not
        self.failures = 0                     # failures in a row; 0 after a success
        self.last_error: BaseException | None = None  # of the last pass that failed, until one succeeds
        self.last_success: float | None = None  # loop time at which the last successful pass ended
        self.retry_delay: float | None = None  # the back-off after the last failure; None after a success
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()  # nothing asked yet
        self._running = False
        self._timers: set[asyncio.TimerHandle] = set()
        self._task: asyncio.Task | None = None

    # --- what the level calls -------------------------------------------------------------

    def wake(self) -> None:
        """Ask for a pass (before start(): the first pass runs as soon as the loop starts)."""
        self._idle.clear()
        self._wake.set()

    def wake_after(self, delay: float) -> None:
        """Ask for a pass in `delay` seconds (a retry the level itself schedules)."""
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle | None = None

        def fire() -> None:
            self._timers.discard(handle)
            self.wake()
        handle = loop.call_later(max(delay, 0.0), fire)
        self._timers.add(handle)

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"{self.name} reconcile")

    async def stop(self) -> None:
        """Stop the loop: cancel a pass in progress and wait until it has ended."""
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def idle(self) -> None:
        """Wait until no pass runs and none is asked for (retries and periods excepted)."""
        await self._idle.wait()

    # --- the loop ---------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            await self._wait()
            self._wake.clear()
            await self._pass()
            if not self._wake.is_set():
                self._idle.set()

    async def _wait(self) -> None:
        """Until a wake (then `debounce` more, for the rest of a burst) or the period."""
        if self._wake.is_set():
            pass
        elif self.period is None:
            await self._wake.wait()
        else:
            try:
                async with asyncio.timeout(self.period):
                    await self._wake.wait()
            except TimeoutError:
                return
        if self.debounce > 0:
            await asyncio.sleep(self.debounce)

    async def _pass(self) -> None:
        self.passes += 1
        try:
            again = await self.reconcile()
        except asyncio.CancelledError:
            raise
        except Exception as err:
            self.failures += 1
            self.last_error = err
            delay = None
            if self.backoff_initial is not None:
                delay = min(self.backoff_cap, self.backoff_initial * 2 ** (self.failures - 1))
                self.wake_after(delay)
            self.retry_delay = delay
            retry = f"; next try in {delay:g} s" if delay is not None else ""
            if isinstance(err, self.expected):
                self.log.warning("%s: reconcile pass failed: %s%s", self.name, err, retry)
            else:
                self.log.exception("%s: reconcile pass failed%s", self.name, retry)
            return
        self.failures = 0
        self.last_error = None
        self.retry_delay = None
        self.last_success = asyncio.get_running_loop().time()
        if again is not None:
            self.wake_after(again)
