"""The digital twin of one emulated network: its fibre plant and its time.

Sites and optical switches are joined by fibre spans; switches join their ports with
cross-connects. Light entering the plant at an attachment point follows spans and
cross-connects until it leaves at another: that route is an optical path, and its loss is
the sum of its spans and of the insertion losses of the cross-connects it crosses.

The twin knows nothing of QKD nodes or key managers. Its one user is the twin service
(devices/twin_service.py), which serves it to the devices over the network: it asks for the
reading of the path between a QKD link's two attachment points (`link_reading`), and
subscribes to plant changes (a span cut or repaired, an eavesdropper attached or removed, a
cross-connect made or undone) to tell the devices when something may have moved.
"""
from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Callable

from qkd_physics import DeviceProfile, link_performance

log = logging.getLogger(__name__)

DEFAULT_ATTENUATION_DB_PER_KM = 0.2
DEFAULT_SWITCH_INSERTION_LOSS_DB = 1.0
DEFAULT_JITTER = 0.05


class Clock:
    """Emulated time: `speed` emulated seconds pass per real second, from 0 at creation.

    `source` is the real monotonic time in seconds; pass another function to drive the
    clock by hand.
    """

    def __init__(self, speed: float = 1.0, source: Callable[[], float] = time.monotonic) -> None:
        if not speed > 0:
            raise ValueError(f"clock speed must be > 0, got {speed!r}")
        self._source = source
        self._speed = speed
        self._real_origin = source()
        self._emulated_origin = 0.0

    @property
    def speed(self) -> float:
        return self._speed

    def set_speed(self, speed: float) -> None:
        """Change the speed from now on; emulated time already passed is kept."""
        if not speed > 0:
            raise ValueError(f"clock speed must be > 0, got {speed!r}")
        self._emulated_origin = self.now()
        self._real_origin = self._source()
        self._speed = speed

    def now(self) -> float:
        return self._emulated_origin + self._speed * (self._source() - self._real_origin)


MAX_PORT = 2**32 - 1  # ports are numbered like ETSI 015 attachment points: uint32


@dataclass(frozen=True)
class Endpoint:
    """A fibre termination: a numbered port of a switch, or a site (optionally a numbered
    position of its patch panel). Written `node` or `node:port`."""

    node: str
    port: int | None = None

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        node, colon, port = text.partition(":")
        if not node or (colon and not (port.isdigit() and port.isascii() and 1 <= int(port) <= MAX_PORT)):
            raise ValueError(f"endpoint {text!r} is not 'node' or 'node:port' with a port number "
                             f"from 1 to {MAX_PORT}")
        return cls(node, int(port) if colon else None)

    def __str__(self) -> str:
        return self.node if self.port is None else f"{self.node}:{self.port}"


@dataclass
class Switch:
    id: str
    ports: tuple[int, ...]
    insertion_loss_db: float = DEFAULT_SWITCH_INSERTION_LOSS_DB


@dataclass
class Span:
    id: str
    a: Endpoint
    b: Endpoint
    length_km: float
    attenuation_db_per_km: float = DEFAULT_ATTENUATION_DB_PER_KM
    cut: bool = False
    eavesdrop_fraction: float = 0.0

    @property
    def loss_db(self) -> float:
        return self.length_km * self.attenuation_db_per_km

    def far_end(self, near: Endpoint) -> Endpoint:
        return self.b if near == self.a else self.a


@dataclass(frozen=True)
class CrossConnect:
    switch: str
    port_a: int
    port_b: int
    insertion_loss_db: float

    def other_port(self, port: int) -> int:
        return self.port_b if port == self.port_a else self.port_a


@dataclass(frozen=True)
class OpticalPath:
    """The route light takes from endpoint `a` to endpoint `b`: spans and cross-connects in order."""

    a: Endpoint
    b: Endpoint
    spans: tuple[str, ...]
    cross_connects: tuple[CrossConnect, ...]


@dataclass(frozen=True)
class LinkReading:
    """What a QKD link over a path sees now. A link with no path, or whose path has a cut span,
    is down: skr 0 and qber 0 (no photons arrive, so no error rate is measured)."""

    up: bool
    skr_bps: float
    qber: float
    loss_db: float | None = None
    path: OpticalPath | None = None


@dataclass(frozen=True)
class PlantChange:
    """kind: span-cut, span-repaired, eavesdropper-attached, eavesdropper-removed,
    cross-connect-added, cross-connect-removed; element: the span id or 'switch:port'."""

    kind: str
    element: str


class Twin:
    """The fibre plant and clock of one emulated network (see the module docstring)."""

    def __init__(self, clock: Clock | None = None, rng: random.Random | None = None,
                 jitter: float = DEFAULT_JITTER) -> None:
        if not 0.0 <= jitter < 1.0:
            raise ValueError(f"jitter must be within [0, 1), got {jitter!r}")
        self.clock = clock or Clock()
        self.rng = rng or random.Random()
        self.jitter = jitter  # relative noise on the key rate: uniform within +-jitter
        self.sites: set[str] = set()
        self.switches: dict[str, Switch] = {}
        self.spans: dict[str, Span] = {}
        self._span_at: dict[Endpoint, Span] = {}
        self._cross_connects: dict[tuple[str, int], CrossConnect] = {}
        self._subscribers: list[Callable[[PlantChange], None]] = []

    # -- building the plant -------------------------------------------------------------

    def add_site(self, site_id: str) -> None:
        self._check_new_node(site_id)
        self.sites.add(site_id)

    def add_switch(self, switch_id: str, ports: list[int] | tuple[int, ...],
                   insertion_loss_db: float = DEFAULT_SWITCH_INSERTION_LOSS_DB) -> None:
        self._check_new_node(switch_id)
        if len(set(ports)) != len(ports):
            raise ValueError(f"switch {switch_id!r} lists a port twice")
        if not insertion_loss_db >= 0:
            raise ValueError(f"switch {switch_id!r}: insertion loss must be >= 0 dB")
        self.switches[switch_id] = Switch(switch_id, tuple(ports), insertion_loss_db)

    def add_span(self, span_id: str, a: Endpoint, b: Endpoint, length_km: float,
                 attenuation_db_per_km: float = DEFAULT_ATTENUATION_DB_PER_KM) -> Span:
        if span_id in self.spans:
            raise ValueError(f"span {span_id!r} already exists")
        if not length_km >= 0 or not attenuation_db_per_km >= 0:
            raise ValueError(f"span {span_id!r}: length and attenuation must be >= 0")
        if a == b:
            raise ValueError(f"span {span_id!r} starts and ends at {a}")
        for end in (a, b):
            self._check_endpoint(end)
            if end in self._span_at:
                raise ValueError(f"span {span_id!r}: {end} already ends span {self._span_at[end].id!r}")
        span = Span(span_id, a, b, length_km, attenuation_db_per_km)
        self.spans[span_id] = span
        self._span_at[a] = self._span_at[b] = span
        return span

    def _check_new_node(self, node_id: str) -> None:
        if node_id in self.sites or node_id in self.switches:
            raise ValueError(f"site or switch {node_id!r} already exists")

    def _check_endpoint(self, end: Endpoint) -> None:
        if end.node in self.switches:
            if end.port not in self.switches[end.node].ports:
                raise ValueError(f"endpoint {end}: switch {end.node!r} has no port {end.port!r}")
        elif end.node not in self.sites:
            raise ValueError(f"endpoint {end}: no site or switch {end.node!r}")

    # -- cross-connects ----------------------------------------------------------------

    def connect(self, switch_id: str, port_a: int, port_b: int,
                insertion_loss_db: float | None = None) -> CrossConnect:
        """Join two ports of a switch; the switch's insertion loss unless one is given."""
        switch = self.switches.get(switch_id)
        if switch is None:
            raise ValueError(f"no switch {switch_id!r}")
        if port_a == port_b:
            raise ValueError(f"switch {switch_id!r}: cannot connect port {port_a!r} to itself")
        for port in (port_a, port_b):
            if port not in switch.ports:
                raise ValueError(f"switch {switch_id!r} has no port {port!r}")
            if (switch_id, port) in self._cross_connects:
                raise ValueError(f"switch {switch_id!r}: port {port!r} is already cross-connected")
        loss = switch.insertion_loss_db if insertion_loss_db is None else insertion_loss_db
        if not loss >= 0:
            raise ValueError(f"switch {switch_id!r}: insertion loss must be >= 0 dB")
        xc = CrossConnect(switch_id, port_a, port_b, loss)
        self._cross_connects[(switch_id, port_a)] = self._cross_connects[(switch_id, port_b)] = xc
        self._notify(PlantChange("cross-connect-added", f"{switch_id}:{port_a}"))
        return xc

    def disconnect(self, switch_id: str, port: int) -> None:
        """Undo the cross-connect that uses `port` of the switch."""
        xc = self._cross_connects.get((switch_id, port))
        if xc is None:
            raise ValueError(f"switch {switch_id!r}: port {port!r} is not cross-connected")
        del self._cross_connects[(switch_id, xc.port_a)]
        del self._cross_connects[(switch_id, xc.port_b)]
        self._notify(PlantChange("cross-connect-removed", f"{switch_id}:{xc.port_a}"))

    def cross_connects(self, switch_id: str) -> list[CrossConnect]:
        return sorted({xc for (sw, _), xc in self._cross_connects.items() if sw == switch_id},
                      key=lambda xc: (xc.port_a, xc.port_b))

    # -- faults --------------------------------------------------------------------------

    def cut_span(self, span_id: str) -> None:
        span = self._span(span_id)
        if not span.cut:
            span.cut = True
            self._notify(PlantChange("span-cut", span_id))

    def repair_span(self, span_id: str) -> None:
        span = self._span(span_id)
        if span.cut:
            span.cut = False
            self._notify(PlantChange("span-repaired", span_id))

    def attach_eavesdropper(self, span_id: str, fraction: float) -> None:
        """An intercept-resend eavesdropper on `fraction` of the pulses crossing the span."""
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"eavesdropper fraction must be within (0, 1], got {fraction!r}")
        self._span(span_id).eavesdrop_fraction = fraction
        self._notify(PlantChange("eavesdropper-attached", span_id))

    def remove_eavesdropper(self, span_id: str) -> None:
        span = self._span(span_id)
        if span.eavesdrop_fraction:
            span.eavesdrop_fraction = 0.0
            self._notify(PlantChange("eavesdropper-removed", span_id))

    def _span(self, span_id: str) -> Span:
        span = self.spans.get(span_id)
        if span is None:
            raise ValueError(f"no span {span_id!r}")
        return span

    # -- subscribers ---------------------------------------------------------------------

    def subscribe(self, callback: Callable[[PlantChange], None]) -> Callable[[], None]:
        """Call `callback` on every plant change; returns the function that unsubscribes."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback)

    def _notify(self, change: PlantChange) -> None:
        for callback in list(self._subscribers):
            try:
                callback(change)
            except Exception:  # one broken subscriber must not starve the others
                log.exception("plant-change subscriber failed on %s %s", change.kind, change.element)

    # -- paths and readings --------------------------------------------------------------

    def trace(self, start: Endpoint) -> OpticalPath | None:
        """Follow the light from `start` through spans and cross-connects to where it leaves
        the plant. None if it leaves nowhere (an unconnected switch port, or a loop)."""
        self._check_endpoint(start)
        spans: list[str] = []
        xcs: list[CrossConnect] = []
        here = start
        while len(spans) <= len(self.spans):
            if here.node in self.switches and (here != start or here not in self._span_at):
                # Entering a switch (after a span, or from a device plugged into a port).
                xc = self._cross_connects.get((here.node, here.port))
                if xc is None:
                    return None
                xcs.append(xc)
                here = Endpoint(here.node, xc.other_port(here.port))
            span = self._span_at.get(here)
            if span is None:
                return OpticalPath(start, here, tuple(spans), tuple(xcs)) if spans or xcs else None
            spans.append(span.id)
            here = span.far_end(here)
            if here.node not in self.switches:
                return OpticalPath(start, here, tuple(spans), tuple(xcs))
        return None

    def path_between(self, a: Endpoint, b: Endpoint) -> OpticalPath | None:
        path = self.trace(a)
        return path if path is not None and path.b == b else None

    def path_loss_db(self, path: OpticalPath) -> float:
        return (sum(self.spans[s].loss_db for s in path.spans)
                + sum(xc.insertion_loss_db for xc in path.cross_connects))

    def path_up(self, path: OpticalPath) -> bool:
        return not any(self.spans[s].cut for s in path.spans)

    def path_eavesdrop_fraction(self, path: OpticalPath) -> float:
        """Fraction of pulses that meet at least one eavesdropper along the path."""
        untouched = 1.0
        for s in path.spans:
            untouched *= 1.0 - self.spans[s].eavesdrop_fraction
        return 1.0 - untouched

    def link_reading(self, a: Endpoint, b: Endpoint, profile: DeviceProfile = DeviceProfile(),
                     jitter: float | None = None) -> LinkReading:
        """Key rate (with jitter: the twin's unless one is given) and QBER of a QKD link between
        attachment points a and b."""
        path = self.path_between(a, b)
        if path is None:
            return LinkReading(up=False, skr_bps=0.0, qber=0.0)
        loss = self.path_loss_db(path)
        if not self.path_up(path):
            return LinkReading(up=False, skr_bps=0.0, qber=0.0, loss_db=loss, path=path)
        skr, qber = link_performance(loss, profile, self.path_eavesdrop_fraction(path))
        jitter = self.jitter if jitter is None else jitter
        skr *= 1.0 + self.rng.uniform(-jitter, jitter)
        return LinkReading(up=True, skr_bps=skr, qber=qber, loss_db=loss, path=path)
