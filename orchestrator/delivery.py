"""The key rate delivered to an intent's SAEs: how fast its session's delivered-bits counter
(qi-service, the source SAE's key manager's count of the keys its SAE fetched) grows over a
sliding window. This is what the applications draw, which may be less than the path can
carry (an idle application draws nothing)."""
from __future__ import annotations

from collections import deque

DELIVERY_WINDOW_S = 10.0   # the rate is measured over (about) this long ...
MIN_SPAN_S = 1.0           # ... and not before two readings this far apart


class DeliveryMeter:
    """Readings of each session's delivered-bits counter, and the rate they show."""

    def __init__(self, window: float = DELIVERY_WINDOW_S, min_span: float = MIN_SPAN_S):
        if not 0 < min_span <= window:
            raise ValueError(f"need 0 < min_span <= window, got {min_span!r} and {window!r}")
        self.window = window
        self.min_span = min_span
        self._readings: dict[str, deque[tuple[float, int]]] = {}

    def observe(self, name: str, delivered_bits: int, now: float) -> int | None:
        """Record a reading taken at `now` (seconds, any monotonic clock); the rate in bit/s
        over the window, or None until the readings span `min_span`. A counter that went
        back (its key manager restarted without its counts) starts the window again."""
        readings = self._readings.setdefault(name, deque())
        if readings and (delivered_bits < readings[-1][1] or now < readings[-1][0]):
            readings.clear()
        readings.append((now, delivered_bits))
        while len(readings) > 2 and readings[1][0] <= now - self.window:
            readings.popleft()  # keep the newest reading at least a window old as the start
        start, bits = readings[0]
        if now - start < self.min_span:
            return None
        return int((delivered_bits - bits) / (now - start))

    def forget(self, name: str) -> None:
        self._readings.pop(name, None)
