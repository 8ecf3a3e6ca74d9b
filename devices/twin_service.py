"""The twin service: the fibre-plant twin and emulated clock of one network, over HTTP.

The devices of a network (fibre plant, optical switches, QKD nodes, key managers) need one
physical world: the same clock, the same fibre, the same key bits at both ends of a link.
`TwinService` owns the `Twin` and serves it over HTTP/JSON (aiohttp) with Server-Sent Events
for changes; `TwinClient` is what the devices of one process use, the same way whether the
service runs in their process (on 127.0.0.1) or on another host. The protocol, its
authentication and how the emulated time and key bits stay consistent between processes
are in docs/twin-service.md.

The QKD nodes register here (their configured links, interfaces and device profile); the
service applies the rule of devices/qkd_node.py to decide when the two ends of a PHYS link
agree, keeps the reading of each link for a node's period so that both ends report the same
figures, and sets the rate of the link's key stream, which it hands only to the link's two
ends and the key managers of their sites.

The quantum nodes register here too (their configuration and faults): the service keeps the
network's `QuantumFabric` (devices/quantum_fabric.py), the one physical layer of their
elementary links, memories and pairs, and serves each node its own links, sessions and pairs
only, each pair half once, to the end node it belongs to.
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import hmac
import json
import logging
import random
import secrets
import time
from dataclasses import dataclass, field
from typing import Callable

import aiohttp
from aiohttp import web

from devices.keystore import KeyStream
from devices.quantum_fabric import QuantumFabric, QuantumRegistration, pair_json
from devices.twin import Clock, Endpoint, LinkReading, PlantChange, Twin
from qkd_physics import DeviceProfile, effective_key_rate

log = logging.getLogger(__name__)

API = "/v1"
START_WAIT_S = 60.0  # how long a device host waits for an unreachable twin service at start
DEVICE_HEADER = "X-Twin-Device"
# Names the event stream a request's process follows (a random id its client picks), so that
# the stream carries only the events of that process's links and nodes (docs/twin-service.md).
SUBSCRIBER_HEADER = "X-Twin-Subscriber"
# Real seconds a key-rate change is announced ahead of taking effect: every holder of the
# stream hears of it first, so that all count the same bits at the same emulated time.
RATE_LEAD_S = 0.1
CLOCK_RESYNC_S = 10.0   # a client on another host re-measures the clock offset this often


def boot_id() -> str:
    """Which kernel's monotonic clock this process reads (equal on one host, containers included)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


# -- what a QKD node registers ---------------------------------------------------------------

@dataclass(frozen=True)
class LinkConfig:
    link_id: str
    kind: str | None  # PHYS, VIRT, or None when qkdl_type is not set
    enabled: bool
    local_node: str | None
    local_if: int | None
    remote_node: str | None
    remote_if: int | None
    apps: tuple[str, ...]
    prev_hop: str | None = None
    next_hops: tuple[str, ...] = ()
    virt_bandwidth: int | None = None

    @classmethod
    def from_json(cls, data: dict) -> LinkConfig:
        return cls(**{**data, "apps": tuple(data["apps"]), "next_hops": tuple(data["next_hops"])})


@dataclass(frozen=True)
class NodeRegistration:
    """A running QKD node as the service knows it: who it is, whether it is up, its links."""

    device: str
    qkdn_id: str
    site: str
    up: bool
    down_reason: str | None
    period: float
    attach: dict[int, Endpoint]
    links: dict[str, LinkConfig]
    profile: DeviceProfile
    jitter: float
    qber_threshold: float  # percent

    def phys(self) -> dict[str, LinkConfig]:
        return {i: link for i, link in self.links.items() if link.kind == "PHYS"}

    def virt(self) -> dict[str, LinkConfig]:
        return {i: link for i, link in self.links.items() if link.kind == "VIRT"}

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        data["attach"] = {str(i): str(end) for i, end in self.attach.items()}
        return data

    @classmethod
    def from_json(cls, data: dict) -> NodeRegistration:
        try:
            return cls(str(data["device"]), str(data["qkdn_id"]), str(data["site"]), bool(data["up"]),
                       data["down_reason"], float(data["period"]),
                       {int(i): Endpoint.parse(end) for i, end in data["attach"].items()},
                       {i: LinkConfig.from_json(link) for i, link in data["links"].items()},
                       DeviceProfile(**data["profile"]), float(data["jitter"]), float(data["qber_threshold"]))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"not a QKD node registration: {exc!r}") from None


@dataclass(frozen=True)
class PhysReading:
    """A PHYS link as both its ends see it now. `pair`: the two qkdn_ids when they agree."""

    generating: bool
    why_not: str = ""
    skr: float = 0.0
    eskr: float = 0.0
    qber: float | None = None  # percent; None when no photons arrive
    pair: frozenset[str] = frozenset()
    taken_at: float = field(default_factory=time.monotonic, compare=False)


class LinkRegistry:
    """The registered QKD nodes of the network and the latest reading of each PHYS link, kept
    for a node's period; dropped whenever the plant or a registration changes."""

    def __init__(self, twin: Twin, set_rate: Callable[[str, frozenset[str], float], None]) -> None:
        self.twin = twin
        self.nodes: dict[str, NodeRegistration] = {}
        self._set_rate = set_rate
        self._readings: dict[str, PhysReading] = {}
        self.rate_set_by: dict[str, frozenset[str]] = {}  # link -> the pair that set its key rate
        self._virt_load: dict[str, int] | None = None

    def invalidate(self) -> None:
        self._readings.clear()
        self._virt_load = None

    def name(self, qkdn_id: str | None) -> str:
        node = self.nodes.get(qkdn_id or "")
        return node.device if node else f"node {qkdn_id}"

    def register(self, node: NodeRegistration) -> set[str]:
        """Store the node's registration; the qkdn_ids whose links may have changed with it."""
        old = self.nodes.get(node.qkdn_id)
        for link_id in old.phys() if old else ():
            if link_id not in node.phys() or not node.up:
                self.link_gone(node.qkdn_id, link_id)
        self.nodes[node.qkdn_id] = node
        self.invalidate()
        return self.peers(old) | self.peers(node)

    def unregister(self, qkdn_id: str) -> set[str]:
        node = self.nodes.pop(qkdn_id, None)
        for link_id in node.phys() if node else ():
            self.link_gone(qkdn_id, link_id)
        self.invalidate()
        return self.peers(node)

    def peers(self, node: NodeRegistration | None) -> set[str]:
        """The nodes whose links may read otherwise with this node changed: those at the other
        end of its links or naming it as theirs, and every node carrying a VIRT link of it or of
        those (a VIRT link reads its whole relay path)."""
        if node is None:
            return set()
        peers = {link.remote_node for link in node.links.values()}
        peers |= {hop for link in node.virt().values() for hop in (link.prev_hop, *link.next_hops)}
        peers |= {other.qkdn_id for other in self.nodes.values()
                  if any(link.remote_node == node.qkdn_id for link in other.links.values())}
        virt = set(node.virt()).union(*(self.nodes[p].virt() for p in peers if p in self.nodes))
        if virt:
            peers |= {other.qkdn_id for other in self.nodes.values() if virt & other.virt().keys()}
        return {p for p in peers if p and p != node.qkdn_id}

    def phys_reading(self, node: NodeRegistration, link: LinkConfig) -> PhysReading:
        cached = self._readings.get(link.link_id)
        if cached is not None and node.qkdn_id in cached.pair and time.monotonic() - cached.taken_at < node.period:
            return cached
        reading = self._read(node, link)
        if reading.pair:
            self._readings[link.link_id] = reading
            self._rate(link.link_id, reading.pair, reading.eskr if reading.generating else 0.0)
        elif node.qkdn_id in self.rate_set_by.get(link.link_id, ()):
            self._rate(link.link_id, self.rate_set_by[link.link_id], 0.0)
        return reading

    def link_gone(self, qkdn_id: str, link_id: str) -> None:
        """A PHYS link was removed from, or stopped with, the node: it distils no more key."""
        self._readings.pop(link_id, None)
        pair = self.rate_set_by.get(link_id, frozenset())
        if qkdn_id in pair:
            self._rate(link_id, pair, 0.0)

    def _rate(self, link_id: str, pair: frozenset[str], eskr: float) -> None:
        self.rate_set_by[link_id] = pair
        self._set_rate(link_id, pair, eskr)

    def _read(self, node: NodeRegistration, link: LinkConfig) -> PhysReading:
        if not node.up:
            return PhysReading(False, f"{node.device} is {node.down_reason}")
        if not link.enabled:
            return PhysReading(False, "the link is disabled here")
        if link.local_if is None or link.local_if not in node.attach:
            return PhysReading(False, "no local interface")
        remote = self.nodes.get(link.remote_node or "")
        if remote is None:
            return PhysReading(False, f"remote {self.name(link.remote_node)} is not reachable")
        if not remote.up:
            return PhysReading(False, f"remote {remote.device} is {remote.down_reason or 'not configured'}")
        other = remote.phys().get(link.link_id)
        if other is None or not other.enabled:
            return PhysReading(False, f"remote {remote.device} has no enabled PHYS link {link.link_id}")
        if (other.remote_node, other.remote_if) != (node.qkdn_id, link.local_if):
            return PhysReading(False, f"remote {remote.device} pairs link {link.link_id} with "
                                      f"{self.name(other.remote_node)} interface {other.remote_if}")
        if other.local_if != link.remote_if or other.local_if not in remote.attach:
            return PhysReading(False, f"remote {remote.device} has no interface {link.remote_if} on link {link.link_id}")
        pair = frozenset((node.qkdn_id, remote.qkdn_id))
        (first, first_link), (second, second_link) = sorted([(node, link), (remote, other)],
                                                            key=lambda end: end[0].qkdn_id)
        reading = self.twin.link_reading(first.attach[first_link.local_if], second.attach[second_link.local_if],
                                         first.profile, first.jitter)
        threshold = min(node.qber_threshold, remote.qber_threshold)
        return _judge(reading, threshold, pair, self.twin)

    def virt_hops(self, node: NodeRegistration, link_id: str) -> tuple[list[tuple[NodeRegistration, LinkConfig]], str]:
        """The PHYS hops of a VIRT link along its relay path, and '' or why the path is incomplete."""
        start, seen = node, {node.qkdn_id}
        while (prev := start.virt()[link_id].prev_hop) is not None:
            before = self.nodes.get(prev)
            if before is None or link_id not in before.virt() or prev in seen:
                return [], f"{self.name(prev)} does not carry VIRT link {link_id}"
            start = before
            seen.add(prev)
        hops, todo, seen = [], [start], {start.qkdn_id}
        while todo:
            here = todo.pop()
            for next_id in here.virt()[link_id].next_hops:
                after = self.nodes.get(next_id)
                if after is None or link_id not in after.virt():
                    return [], f"{self.name(next_id)} does not carry VIRT link {link_id}"
                phys = next((p for p in here.phys().values() if p.remote_node == next_id and p.enabled), None)
                if phys is None:
                    return [], f"{here.device} has no PHYS link to {after.device}"
                hops.append((here, phys))
                if next_id not in seen:
                    seen.add(next_id)
                    todo.append(after)
        return hops, "" if hops else f"VIRT link {link_id} has no hop"

    def virt_load(self) -> dict[str, int]:
        """PHYS link -> the virt_bandwidth of the VIRT links riding on it."""
        if self._virt_load is None:
            load: dict[str, int] = {}
            counted: set[str] = set()
            for node in self.nodes.values():
                for link in node.virt().values():
                    if link.link_id in counted:
                        continue
                    counted.add(link.link_id)
                    for _, phys in self.virt_hops(node, link.link_id)[0]:
                        load[phys.link_id] = load.get(phys.link_id, 0) + (link.virt_bandwidth or 0)
            self._virt_load = load
        return self._virt_load


def _judge(reading: LinkReading, threshold: float, pair: frozenset[str], twin: Twin) -> PhysReading:
    if not reading.up:
        cut = [s for s in reading.path.spans if twin.spans[s].cut] if reading.path else []
        why = f"span {', '.join(cut)} cut" if cut else "no optical path between the two interfaces"
        return PhysReading(False, why, pair=pair)
    qber = reading.qber * 100
    if qber > threshold:
        return PhysReading(False, f"QBER {qber:.2f} % above the {threshold:.2f} % threshold", qber=qber, pair=pair)
    if reading.skr_bps <= 0:
        return PhysReading(False, f"no secret key at {reading.loss_db:.2f} dB", qber=qber, pair=pair)
    return PhysReading(True, skr=reading.skr_bps, eskr=effective_key_rate(reading.skr_bps), qber=qber, pair=pair)


# -- the server ------------------------------------------------------------------------------

@dataclass
class Subscriber:
    """What one process follows: the links whose key streams it asked for (their `stream`
    events), its QKD nodes (`nodes` wakes) and quantum nodes (`quantum` wakes), as it named
    them in its requests; and its open event streams."""

    links: dict[str, str] = field(default_factory=dict)   # link -> the devices that asked for its stream
    nodes: set[str] = field(default_factory=set)
    quantum: set[str] = field(default_factory=set)
    queues: set[asyncio.Queue] = field(default_factory=set)

    def wants(self, event: dict, may_read: Callable[[str, str], bool]) -> dict | None:
        """The event as this subscriber gets it (a wake cut to its own nodes), or None; a
        `stream` event only when one of the devices that asked for the link may read it."""
        kind = event["type"]
        if kind == "stream":
            asked = self.links.get(event["link"])
            return event if asked is not None and may_read(asked, event["link"]) else None
        if kind == "nodes":
            wake = [n for n in event["wake"] if n in self.nodes]
            return {**event, "wake": wake} if wake else None
        if kind == "quantum":
            wake, pairs = [n for n in event["wake"] if n in self.quantum], [n for n in event["pairs"] if n in self.quantum]
            return {**event, "wake": wake, "pairs": pairs} if wake or pairs else None
        return event   # plant and clock: every process



class TwinService:
    """Serves one network's twin (see the module docstring and docs/twin-service.md).

    `key_manager_sites`: km id -> its site, for the key managers that may fetch the streams
    of links ending at their site (from the topology); none given: no key manager may."""

    def __init__(self, twin: Twin, token: str, host: str = "127.0.0.1", port: int = 0,
                 key_manager_sites: dict[str, str] | None = None, name: str = "twin") -> None:
        if not token:
            raise ValueError("the twin service needs a token: the credential its devices share")
        self.twin = twin
        self.token = token
        self.host = host
        self.port = port
        self.name = name
        self.km_sites = dict(key_manager_sites or {})
        self.streams: dict[str, KeyStream] = {}
        self.pairs: dict[str, frozenset[str]] = {}  # link -> the qkdn_ids its stream is served to
        self.registry = LinkRegistry(twin, self._set_rate)
        self._end_devices: dict[str, str] = {}  # qkdn_id -> its device id and site, as registered
        self._end_sites: dict[str, str] = {}
        self._generated: set[str] = set()  # links that have distilled key (the key managers may hold it)
        self._subscribers: dict[str, Subscriber] = {}
        self._quantum: QuantumFabric | None = None  # made when the first quantum node registers
        self._runner: web.AppRunner | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._boot_id = boot_id()
        self.requests: collections.Counter[str] = collections.Counter()  # "METHOD /route" -> requests served

    @property
    def clock(self) -> Clock:
        return self.twin.clock

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        app = web.Application(middlewares=[self._authenticate], client_max_size=1 << 20)
        r = app.router
        r.add_get(f"{API}/clock", self._get_clock)
        r.add_put(f"{API}/clock", self._put_clock)
        r.add_get(f"{API}/plant", self._get_plant)
        r.add_post(f"{API}/spans/{{span}}", self._span_action)
        r.add_put(f"{API}/switches/{{switch}}/cross-connects", self._put_cross_connects)
        r.add_post(f"{API}/nodes/links", self._post_links)
        r.add_put(f"{API}/nodes/{{qkdn_id}}", self._put_node)
        r.add_delete(f"{API}/nodes/{{qkdn_id}}", self._delete_node)
        r.add_get(f"{API}/nodes/{{qkdn_id}}/links", self._get_links)
        r.add_get(f"{API}/streams/{{link}}", self._get_stream)
        r.add_post(f"{API}/streams/{{link}}/adopt", self._adopt_stream)
        r.add_put(f"{API}/quantum-nodes/{{node}}", self._put_quantum_node)
        r.add_delete(f"{API}/quantum-nodes/{{node}}", self._delete_quantum_node)
        r.add_get(f"{API}/quantum-nodes/{{node}}", self._get_quantum_node)
        r.add_post(f"{API}/quantum-nodes/{{node}}/pairs/claim", self._claim_pairs)
        r.add_post(f"{API}/quantum-nodes/{{node}}/pairs/receive", self._receive_pairs)
        r.add_get(f"{API}/events", self._events)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        self._unsubscribe = self.twin.subscribe(self._plant_changed)

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._quantum is not None:
            self._quantum.stop()
        for subscriber in self._subscribers.values():
            for queue in list(subscriber.queues):
                queue.put_nowait(None)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> TwinService:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- authentication and access ----------------------------------------------------------

    @web.middleware
    async def _authenticate(self, request: web.Request, handler):
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), self.token.encode()):
            return _error(401, "the twin service needs the network's bearer token",
                          headers={"WWW-Authenticate": 'Bearer realm="qstrata-twin"'})
        if not request.headers.get(DEVICE_HEADER):
            return _error(400, f"name the calling device in the {DEVICE_HEADER} header")
        if request.match_info.route.resource is not None:
            self.requests[f"{request.method} {request.match_info.route.resource.canonical}"] += 1
        try:
            return await handler(request)
        except ValueError as exc:   # the twin refuses a bad element or value
            return _error(400, str(exc))

    def _may_read_stream(self, devices: str, link_id: str) -> bool:
        """Whether one of the devices (comma-separated: a process speaks for its devices) is an
        end of the link or the key manager of an end's site."""
        pair = self.pairs.get(link_id, frozenset())
        ends = {self._end_devices.get(q) for q in pair}
        sites = {self._end_sites.get(q) for q in pair}
        return any(device in ends or self.km_sites.get(device, "") in sites for device in devices.split(","))

    # -- events -----------------------------------------------------------------------------

    def _subscriber(self, request: web.Request) -> Subscriber | None:
        """The subscriber a request names (made on first mention), or None."""
        name = request.headers.get(SUBSCRIBER_HEADER)
        if not name:
            return None
        return self._subscribers.setdefault(name, Subscriber())

    def _publish(self, event: dict) -> None:
        """The event to every open stream of each subscriber that follows it (encoded once when
        it goes out whole)."""
        whole: bytes | None = None
        for subscriber in self._subscribers.values():
            if not subscriber.queues or (wanted := subscriber.wants(event, self._may_read_stream)) is None:
                continue
            if wanted is event:
                whole = whole or _sse(event)
            for queue in subscriber.queues:
                queue.put_nowait(whole if wanted is event else _sse(wanted))

    def _plant_changed(self, change: PlantChange) -> None:
        self.registry.invalidate()
        if self._quantum is not None:
            self._quantum.changed()
        self._publish({"type": "plant", "kind": change.kind, "element": change.element})

    async def _events(self, request: web.Request) -> web.StreamResponse:
        subscriber = self._subscriber(request)
        if subscriber is None:
            return _error(400, f"name the event stream's subscriber in the {SUBSCRIBER_HEADER} header")
        queue: asyncio.Queue = asyncio.Queue()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        subscriber.queues.add(queue)
        try:
            await response.write(b": connected\n\n")
            while (line := await queue.get()) is not None:
                await response.write(line)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            subscriber.queues.discard(queue)
        return response

    # -- clock and plant --------------------------------------------------------------------

    def clock_json(self) -> dict:
        clock = self.clock
        now, real = clock.now(), time.monotonic()
        same_source = getattr(clock, "_source", None) is time.monotonic
        return {"now": now, "speed": clock.speed, "monotonic": real if same_source else None,
                "boot_id": self._boot_id if same_source else None}

    async def _get_clock(self, request: web.Request) -> web.Response:
        return web.json_response(self.clock_json())

    async def _put_clock(self, request: web.Request) -> web.Response:
        speed = (await _body(request)).get("speed")
        if isinstance(speed, bool) or not isinstance(speed, (int, float)):
            return _error(400, f"speed must be a number > 0, got {speed!r}")
        if speed != self.clock.speed:
            self.clock.set_speed(float(speed))
            self._publish({"type": "clock"})
        return web.json_response(self.clock_json())

    async def _get_plant(self, request: web.Request) -> web.Response:
        twin = self.twin
        return web.json_response({
            "sites": sorted(twin.sites),
            "switches": {s.id: {"ports": list(s.ports), "insertion_loss_db": s.insertion_loss_db,
                                "cross_connects": [[xc.port_a, xc.port_b, xc.insertion_loss_db]
                                                   for xc in twin.cross_connects(s.id)]}
                         for s in twin.switches.values()},
            "spans": {s.id: {"a": str(s.a), "b": str(s.b), "length_km": s.length_km,
                             "attenuation_db_per_km": s.attenuation_db_per_km, "loss_db": s.loss_db, "cut": s.cut,
                             "eavesdrop_fraction": s.eavesdrop_fraction} for s in twin.spans.values()},
            "clock": self.clock_json()})

    async def _span_action(self, request: web.Request) -> web.Response:
        span, body = request.match_info["span"], await _body(request)
        action = body.get("action")
        twin = self.twin
        if span not in twin.spans:
            return _error(404, f"no span {span!r}")
        if action == "cut":
            twin.cut_span(span)
        elif action == "repair":
            twin.repair_span(span)
        elif action == "attach-eavesdropper":
            fraction = body.get("fraction")
            if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
                return _error(400, f"fraction must be a number within (0, 1], got {fraction!r}")
            twin.attach_eavesdropper(span, float(fraction))
        elif action == "remove-eavesdropper":
            twin.remove_eavesdropper(span)
        else:
            return _error(400, f"action must be cut, repair, attach-eavesdropper or remove-eavesdropper, "
                               f"got {action!r}")
        return web.json_response({"span": span, "cut": twin.spans[span].cut,
                                  "eavesdrop_fraction": twin.spans[span].eavesdrop_fraction})

    async def _put_cross_connects(self, request: web.Request) -> web.Response:
        """Make the switch's cross-connects exactly these ([port_a, port_b, loss]); all or none."""
        switch = request.match_info["switch"]
        if request.headers[DEVICE_HEADER] != switch:
            return _error(403, f"only switch {switch!r} sets its cross-connects")
        if switch not in self.twin.switches:
            return _error(404, f"no switch {switch!r}")
        body = await _body(request)
        try:
            wanted = {(int(a), int(b)): float(loss) for a, b, loss in body["cross_connects"]}
        except (KeyError, TypeError, ValueError):
            return _error(400, "cross_connects must be a list of [port_a, port_b, insertion loss in dB]")
        twin = self.twin
        before = {(xc.port_a, xc.port_b): xc.insertion_loss_db for xc in twin.cross_connects(switch)}
        try:
            self._make(switch, before, wanted)
        except ValueError as exc:
            self._make(switch, {(xc.port_a, xc.port_b): xc.insertion_loss_db for xc in twin.cross_connects(switch)},
                       before)
            return _error(409, str(exc))
        return web.json_response({"cross_connects": [[a, b, loss] for (a, b), loss in wanted.items()]})

    def _make(self, switch: str, have: dict, wanted: dict) -> None:
        for ports, loss in have.items():
            if wanted.get(ports) != loss:
                self.twin.disconnect(switch, ports[0])
        for ports, loss in wanted.items():
            if have.get(ports) != loss:
                self.twin.connect(switch, ports[0], ports[1], insertion_loss_db=loss)

    # -- QKD nodes and their links ------------------------------------------------------------

    async def _put_node(self, request: web.Request) -> web.Response:
        node = NodeRegistration.from_json(await _body(request))
        if node.qkdn_id != request.match_info["qkdn_id"] or node.device != request.headers[DEVICE_HEADER]:
            return _error(403, f"device {request.headers[DEVICE_HEADER]!r} may register only itself")
        if (subscriber := self._subscriber(request)) is not None:
            subscriber.nodes.add(node.qkdn_id)
        peers = self.registry.register(node)
        self._wake(peers)
        return web.json_response({"registered": node.qkdn_id, "woke": sorted(peers)})

    async def _delete_node(self, request: web.Request) -> web.Response:
        qkdn_id = request.match_info["qkdn_id"]
        node = self.registry.nodes.get(qkdn_id)
        if node is not None and node.device != request.headers[DEVICE_HEADER]:
            return _error(403, f"only {node.device} may unregister itself")
        peers = self.registry.unregister(qkdn_id)
        self._wake(peers)
        return web.json_response({"woke": sorted(peers)})

    def _wake(self, peers: set[str]) -> None:
        if peers:
            self._publish({"type": "nodes", "wake": sorted(peers)})

    async def _get_links(self, request: web.Request) -> web.Response:
        """Every link of the node as it is now (`links_json`)."""
        node = self.registry.nodes.get(request.match_info["qkdn_id"])
        if node is None:
            return _error(404, f"no QKD node {request.match_info['qkdn_id']} is registered")
        if node.device != request.headers[DEVICE_HEADER]:
            return _error(403, f"only {node.device} reads its links")
        return web.json_response({"links": self.links_json(node)})

    async def _post_links(self, request: web.Request) -> web.Response:
        """The links of several nodes in one request (a process's QKD nodes, once a period):
        body `{"nodes": {qkdn_id: device}}`, each node's registered device named as the per-node
        resource's caller; answer `{"nodes": {qkdn_id: {"links": ...} or {"status": 404, "error": ...}}}`.
        One node of another device refuses the whole request."""
        wanted = (await _body(request)).get("nodes")
        if not isinstance(wanted, dict) or not all(isinstance(d, str) and d for d in wanted.values()):
            return _error(400, 'the body must be {"nodes": {qkdn_id: the device of that node}}')
        answer = {}
        for qkdn_id, device in wanted.items():
            node = self.registry.nodes.get(qkdn_id)
            if node is None:
                answer[qkdn_id] = {"status": 404, "error": f"no QKD node {qkdn_id} is registered"}
            elif node.device != device:
                return _error(403, f"QKD node {qkdn_id} is {node.device}'s, not {device}'s: only {node.device} "
                                   f"reads its links")
            else:
                answer[qkdn_id] = {"links": self.links_json(node)}
        return web.json_response({"nodes": answer})

    def links_json(self, node: NodeRegistration) -> dict:
        """Every link of the node as it is now: PHYS and VIRT readings, and the bits each PHYS
        link's stream has produced (never the stream's secret)."""
        load = self.registry.virt_load()
        links = {}
        for link in node.links.values():
            if link.kind == "PHYS":
                r = self.registry.phys_reading(node, link)
                stream = self.streams.get(link.link_id)
                produced = stream.produced_bits() if stream is not None else 0
                links[link.link_id] = {"generating": r.generating, "why_not": r.why_not, "skr": r.skr,
                                       "eskr": r.eskr, "qber": r.qber, "load": load.get(link.link_id, 0),
                                       "produced_bits": produced,
                                       "idle": "PASSIVE" if link.link_id in self._generated else "PENDING"}
            elif link.kind == "VIRT":
                links[link.link_id] = self._virt(node, link)
        return links

    def _virt(self, node: NodeRegistration, link: LinkConfig) -> dict:
        hops, incomplete = self.registry.virt_hops(node, link.link_id)
        if incomplete:
            return {"generating": False, "why_not": incomplete, "skr": 0, "eskr": 0, "qber": None, "idle": "PENDING"}
        readings = [self.registry.phys_reading(n, phys) for n, phys in hops]
        down = next((f"hop {phys.link_id}: {r.why_not}" for (_, phys), r in zip(hops, readings) if not r.generating),
                    "")
        rate = min(r.eskr for r in readings)
        if link.virt_bandwidth is not None:
            rate = min(rate, link.virt_bandwidth)
        return {"generating": not down, "why_not": down, "skr": rate, "eskr": rate, "qber": None, "idle": "PASSIVE"}

    # -- key streams --------------------------------------------------------------------------

    def _set_rate(self, link_id: str, pair: frozenset[str], eskr: float) -> None:
        stream = self.streams.get(link_id)
        if stream is None:
            stream = self.streams[link_id] = KeyStream(link_id, self.clock)
        if self.pairs.get(link_id) != pair:
            self.pairs[link_id] = pair
            for qkdn_id in pair & set(self.registry.nodes):
                self._end_devices[qkdn_id] = self.registry.nodes[qkdn_id].device
                self._end_sites[qkdn_id] = self.registry.nodes[qkdn_id].site
        if eskr > 0 or stream.produced_bits() > 0:
            self._generated.add(link_id)
        if eskr == stream.history()[-1][2] and len(stream.history()) > 1:
            return
        stream.set_rate(eskr, at=self.clock.now() + RATE_LEAD_S * self.clock.speed)
        self._publish({"type": "stream", "link": link_id, "history": stream.history()})

    def _stream_json(self, link_id: str) -> dict:
        stream = self.streams[link_id]
        return {"link": link_id, "secret": stream.snapshot()["secret"], "history": stream.history()}

    def _follow_link(self, request: web.Request, link_id: str) -> None:
        """The caller's process hears of the link's rate changes from now on (its `stream`
        events): it asked for the stream, which it gets once the ends agree if it may."""
        if (subscriber := self._subscriber(request)) is not None:
            subscriber.links[link_id] = request.headers[DEVICE_HEADER]

    async def _get_stream(self, request: web.Request) -> web.Response:
        link_id, device = request.match_info["link"], request.headers[DEVICE_HEADER]
        if link_id not in self.pairs:
            self._follow_link(request, link_id)
            return _error(404, f"link {link_id} has no key stream yet: its two ends have not agreed")
        if not self._may_read_stream(device, link_id):
            log.warning("twin: %s asked for the key stream of link %s, of which it is no end", device, link_id)
            return _error(403, f"{device} is neither an end of link {link_id} nor the key manager of one")
        self._follow_link(request, link_id)
        return web.json_response(self._stream_json(link_id))

    async def _adopt_stream(self, request: web.Request) -> web.Response:
        """A restarted key manager's saved stream: the running one if the link has one, else the
        saved one becomes the link's (served once its ends agree)."""
        link_id, device = request.match_info["link"], request.headers[DEVICE_HEADER]
        if not any(d in self.km_sites for d in device.split(",")):
            return _error(403, f"{device} is not a key manager of this network")
        if link_id not in self.streams:
            body = await _body(request)
            try:
                saved = KeyStream.restore({**body, "link_id": link_id, "rate_bps": 0.0}, self.clock)
            except (KeyError, TypeError, ValueError):
                return _error(400, "a saved stream needs secret (hex) and produced_bits")
            self.streams[link_id] = saved
        if link_id not in self.pairs:
            self._follow_link(request, link_id)
            return _error(404, f"link {link_id} has no key stream yet: its two ends have not agreed")
        if not self._may_read_stream(device, link_id):
            return _error(403, f"{device} is neither an end of link {link_id} nor the key manager of one")
        self._follow_link(request, link_id)
        return web.json_response(self._stream_json(link_id))

    # -- quantum nodes, their elementary links and pairs ----------------------------------------

    @property
    def quantum(self) -> QuantumFabric:
        if self._quantum is None:
            self._quantum = QuantumFabric(self.twin, random.Random(self.twin.rng.random()), self._quantum_moved)
        return self._quantum

    def _quantum_moved(self, nodes: set[str], paired: set[str]) -> None:
        if nodes or paired:
            self._publish({"type": "quantum", "wake": sorted(nodes), "pairs": sorted(paired)})

    def _quantum_caller(self, request: web.Request, registered: bool = True) -> str | web.Response:
        """The node-id of the request, when the calling device is that node (and registered)."""
        node_id, device = request.match_info["node"], request.headers[DEVICE_HEADER]
        if device != node_id:
            log.warning("twin: %s asked for quantum node %s", device, node_id)
            return _error(403, f"device {device!r} speaks only for itself, not for quantum node {node_id!r}")
        if registered and node_id not in self.quantum.nodes:
            return _error(404, f"no quantum node {node_id} is registered")
        return node_id

    async def _put_quantum_node(self, request: web.Request) -> web.Response:
        node_id = self._quantum_caller(request, registered=False)
        if isinstance(node_id, web.Response):
            return node_id
        self.quantum.register(QuantumRegistration.from_json(node_id, await _body(request)))
        if (subscriber := self._subscriber(request)) is not None:
            subscriber.quantum.add(node_id)
        return web.json_response({"registered": node_id})

    async def _delete_quantum_node(self, request: web.Request) -> web.Response:
        node_id = self._quantum_caller(request, registered=False)
        if isinstance(node_id, web.Response):
            return node_id
        if self._quantum is not None:
            self._quantum.unregister(node_id)
        return web.json_response({})

    async def _get_quantum_node(self, request: web.Request) -> web.Response:
        node_id = self._quantum_caller(request)
        if isinstance(node_id, web.Response):
            return node_id
        self.quantum.advance(self.clock.now())
        return web.json_response(self.quantum.report(node_id))

    async def _claim_pairs(self, request: web.Request) -> web.Response:
        """Waiting pairs of the caller's session with `remote`, for an application at the caller:
        `{pairs, status, reason}` (fewer than asked, or none, while the session makes them)."""
        node_id = self._quantum_caller(request)
        if isinstance(node_id, web.Response):
            return node_id
        body = await _body(request)
        remote, number, min_fidelity = body.get("remote"), body.get("number"), body.get("min_fidelity")
        measure, bases = body.get("measure", False), body.get("bases", [])
        if not isinstance(remote, str) or not _count(number):
            return _error(400, "a claim needs remote (a node-id) and number (an integer >= 1)")
        if isinstance(min_fidelity, bool) or not isinstance(min_fidelity, (int, float)) or not 0 <= min_fidelity <= 1:
            return _error(400, f"min_fidelity must be a number within [0, 1], got {min_fidelity!r}")
        if not isinstance(measure, bool) or not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
            return _error(400, "measure must be a boolean and bases a list of basis names")
        fabric = self.quantum
        now = self.clock.now()
        fabric.advance(now)
        run = fabric.session_between(node_id, remote)
        if run is None:
            return web.json_response({"pairs": [], "status": "waiting",
                                      "reason": f"no session between {node_id} and {remote} is running"})
        pairs = fabric.claim(run, node_id, number, float(min_fidelity), measure, tuple(bases), now)
        return web.json_response({"pairs": [pair_json(p) for p in pairs], "status": run.status, "reason": run.reason})

    async def _receive_pairs(self, request: web.Request) -> web.Response:
        """The caller's halves of the pairs `remote`'s applications claimed, each served once."""
        node_id = self._quantum_caller(request)
        if isinstance(node_id, web.Response):
            return node_id
        body = await _body(request)
        remote, number = body.get("remote"), body.get("number")
        if not isinstance(remote, str) or not _count(number):
            return _error(400, "a receive needs remote (a node-id) and number (an integer >= 1)")
        return web.json_response({"pairs": [pair_json(p) for p in self.quantum.receive(node_id, remote, number)]})


def _sse(event: dict) -> bytes:
    return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _error(status: int, message: str, headers: dict | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


async def _body(request: web.Request) -> dict:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError("the body is not JSON") from None
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    return body


# -- the client ------------------------------------------------------------------------------

class TwinError(Exception):
    """The twin service refused a request (or could not be reached): `status`, its message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class SyncedClock:
    """The service's emulated clock as a client reads it: on the same host, the service's own
    monotonic anchor (exactly its time); elsewhere, its `now` at the middle of a round trip."""

    def __init__(self) -> None:
        self.speed = 1.0
        self._emulated = 0.0
        self._real = time.monotonic()
        self.synced_at = -CLOCK_RESYNC_S

    def now(self) -> float:
        return self._emulated + self.speed * (time.monotonic() - self._real)

    def anchor(self, data: dict, sent: float, received: float) -> None:
        self.speed = float(data["speed"])
        if data.get("boot_id") and data["boot_id"] == boot_id():
            self._emulated, self._real = float(data["now"]), float(data["monotonic"])
        else:
            self._emulated, self._real = float(data["now"]), (sent + received) / 2
        self.synced_at = received


@dataclass(frozen=True)
class TwinAddress:
    """Where a network's twin service listens, and the token its devices share."""

    host: str
    port: int
    token: str = field(repr=False)


@dataclass(frozen=True)
class _LinksFetch:
    """One POST /nodes/links in flight: for whom, after which change, whether a new round."""

    nodes: dict[str, str]
    version: int
    full: bool
    task: asyncio.Task


class NodeLinks:
    """The link readings of the QKD nodes this process registered, asked for all of them in one
    request (POST /nodes/links) and kept for the asking node's period: a round. A node changed
    since (its own registration, a `nodes` wake naming it) is asked for again, alone or with the
    others changed meanwhile; a plant change, a clock change or a resync starts a new round.
    One request is in flight at a time: whoever needs it awaits it, the others the next one."""

    def __init__(self, client: TwinClient) -> None:
        self._client = client
        self._devices: dict[str, str] = {}   # qkdn_id -> its device, for the nodes registered here
        self._entries: dict[str, dict] = {}  # qkdn_id -> its answer in this round
        self._round_at = -float("inf")       # when this round's request was sent
        self._version = 0                    # counts the changes heard
        self._changed: dict[str, int] = {}   # qkdn_id -> the change that last dropped its entry
        self._all_changed = 0
        self._fetch: _LinksFetch | None = None

    def track(self, qkdn_id: str, device: str) -> None:
        self._devices[qkdn_id] = device
        self.drop([qkdn_id])

    def untrack(self, qkdn_id: str) -> None:
        self._devices.pop(qkdn_id, None)
        self._changed.pop(qkdn_id, None)
        self._entries.pop(qkdn_id, None)

    def drop(self, qkdn_ids: list[str] | None = None) -> None:
        """Forget the readings of these nodes (all: None): they may have changed."""
        self._version += 1
        if qkdn_ids is None:
            self._entries.clear()
            self._all_changed = self._version
            return
        for qkdn_id in qkdn_ids:
            if qkdn_id in self._devices:
                self._entries.pop(qkdn_id, None)
                self._changed[qkdn_id] = self._version

    def heard(self, method: str, path: str, answer: dict) -> None:
        """A change this process made drops at once what it changed, before the event says so:
        the plant or clock (all), a node's registration (the peers the service woke)."""
        if method != "GET" and path.startswith(("/spans/", "/switches/", "/clock")):
            self.drop()
        elif method in ("PUT", "DELETE") and path.startswith("/nodes/") and isinstance(answer, dict):
            self.drop(answer.get("woke", []))

    async def links(self, qkdn_id: str, period: float) -> dict:
        """The node's links as GET /nodes/{qkdn_id}/links answers them; TwinError as it would."""
        if qkdn_id not in self._devices:
            raise TwinError(404, f"QKD node {qkdn_id} has not registered from this process")
        while True:
            fresh = time.monotonic() - self._round_at < period
            if fresh and (entry := self._entries.get(qkdn_id)) is not None:
                return _node_links(qkdn_id, entry)
            fetch = self._fetch
            if fetch is None:
                fetch = self._start(full=not fresh)
            elif not (qkdn_id in fetch.nodes and (fetch.full or fresh)
                      and fetch.version >= max(self._changed.get(qkdn_id, 0), self._all_changed)):
                await asyncio.wait([fetch.task])   # not sent for us: the next one will be
                continue
            answers = await asyncio.shield(fetch.task)
            return _node_links(qkdn_id, answers.get(qkdn_id))

    def _start(self, full: bool) -> _LinksFetch:
        nodes = dict(self._devices) if full else {q: d for q, d in self._devices.items() if q not in self._entries}
        task = asyncio.get_running_loop().create_task(self._ask(nodes, self._version, full, time.monotonic()))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())   # errors go to the awaiting nodes
        self._fetch = _LinksFetch(nodes, self._version, full, task)
        return self._fetch

    async def _ask(self, nodes: dict[str, str], version: int, full: bool, sent_at: float) -> dict:
        try:
            answers = (await self._client.request("POST", "/nodes/links", body={"nodes": nodes})).get("nodes", {})
        finally:
            self._fetch = None
        if full and self._all_changed <= version:
            self._entries, self._round_at = {}, sent_at
        for qkdn_id, answer in answers.items():
            if qkdn_id in self._devices and max(self._changed.get(qkdn_id, 0), self._all_changed) <= version:
                self._entries[qkdn_id] = answer
        return answers


def _node_links(qkdn_id: str, answer: dict | None) -> dict:
    if answer is None:
        raise TwinError(502, f"the twin service did not answer for QKD node {qkdn_id}")
    if "links" not in answer:
        raise TwinError(answer.get("status", 502), answer.get("error", f"no links for QKD node {qkdn_id}"))
    return answer["links"]


class TwinClient:
    """The devices of one process speaking to their network's twin service. `watch` delivers
    its events; `stream` gives the key stream of a link (bound once the service hands it)."""

    def __init__(self, address: TwinAddress | None, device: str = "devices") -> None:
        self.address = address
        self.device = device  # who calls when a request names nobody else (the process)
        self.key_managers: list[str] = []  # this process's key managers: whom streams are fetched for
        self.clock = SyncedClock()
        self.plant: dict = {}
        self._session: aiohttp.ClientSession | None = None
        self._events: asyncio.Task | None = None
        self._watchers: list[Callable[[dict], None]] = []
        self._streams: dict[str, KeyStream] = {}
        self._stream_owner: dict[str, str] = {}  # link -> the key manager it is fetched as
        self._tasks: set[asyncio.Task] = set()
        self.connected = asyncio.Event()
        self.node_links = NodeLinks(self)   # the readings of this process's QKD nodes, one request a period
        # Names this client's event stream in every request: the service sends it the events
        # of the links, nodes and quantum nodes this client's requests named, no others.
        self.subscriber = secrets.token_urlsafe(16)

    @property
    def url(self) -> str:
        return f"http://{self.address.host}:{self.address.port}{API}"

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(headers={"Authorization": f"Bearer {self.address.token}",
                                                       SUBSCRIBER_HEADER: self.subscriber},
                                              timeout=aiohttp.ClientTimeout(total=30))
        try:
            await self._first_contact()
            await self.refresh_plant()
        except BaseException:
            await self._session.close()
            raise
        self._events = asyncio.get_running_loop().create_task(self._follow(), name="twin events")
        await asyncio.wait_for(self.connected.wait(), 30)

    async def _first_contact(self, wait: float = START_WAIT_S) -> None:
        """The clock, once the service answers: a host may come up before the twin's does
        (levels start in any order), so an unreachable service is waited for, up to `wait`
        seconds; a refusal (bad token) is not."""
        deadline, delay = time.monotonic() + wait, 0.1
        while True:
            try:
                await self.sync_clock()
                return
            except TwinError as error:
                if error.status != 503 or time.monotonic() + delay > deadline:
                    raise
                if delay == 0.1:
                    log.info("%s: waiting for the twin service: %s", self.device, error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def stop(self) -> None:
        for task in [self._events, *self._tasks]:
            if task is not None:
                task.cancel()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(self, method: str, path: str, device: str | None = None, body: dict | None = None) -> dict:
        headers = {DEVICE_HEADER: device or self.device}
        try:
            async with self._session.request(method, self.url + path, json=body, headers=headers) as response:
                data = await response.json(content_type=None)
                if response.status >= 300:
                    raise TwinError(response.status, (data or {}).get("error", response.reason))
        except (aiohttp.ClientError, asyncio.TimeoutError, json.JSONDecodeError) as exc:
            raise TwinError(503, f"twin service {self.address.host}:{self.address.port} unreachable: "
                                 f"{exc or type(exc).__name__}") from None
        self.node_links.heard(method, path, data)
        return data

    async def sync_clock(self) -> None:
        sent = time.monotonic()
        data = await self.request("GET", "/clock")
        self.clock.anchor(data, sent, time.monotonic())

    async def refresh_plant(self) -> dict:
        self.plant = await self.request("GET", "/plant")
        return self.plant

    def watch(self, callback: Callable[[dict], None]) -> Callable[[], None]:
        """Call `callback(event)` on every event of the service; returns the unsubscribe."""
        self._watchers.append(callback)
        return lambda: self._watchers.remove(callback) if callback in self._watchers else None

    async def _follow(self) -> None:
        """Read the event stream; reconnect with back-off; after a reconnect every watcher hears
        a 'resync' (events may have been missed) and every stream is fetched again (which also
        names its link to a service that restarted and forgot this subscriber)."""
        delay, first = 0.2, True
        while True:
            try:
                async with self._session.get(self.url + "/events", headers={DEVICE_HEADER: self.device},
                                             timeout=aiohttp.ClientTimeout(total=None, sock_connect=10)) as response:
                    if response.status != 200:
                        raise TwinError(response.status, "the twin service refused the event stream")
                    self.connected.set()
                    if not first:
                        await self.sync_clock()
                        await self.refresh_plant()
                        for link_id in list(self._streams):
                            self._spawn(self._bind(link_id))
                        self.node_links.drop()
                        self._dispatch({"type": "resync"})
                    first, delay = False, 0.2
                    async for line in response.content:
                        if line.startswith(b"data: "):
                            await self._event(json.loads(line[6:]))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("twin events from %s:%s: %s; reconnecting in %.1f s", self.address.host,
                            self.address.port, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _event(self, event: dict) -> None:
        kind = event["type"]
        if kind == "nodes":
            self.node_links.drop(event["wake"])
        elif kind in ("plant", "clock"):
            self.node_links.drop()
        if kind == "clock" or time.monotonic() - self.clock.synced_at > CLOCK_RESYNC_S:
            await self.sync_clock()
        if kind == "plant":
            await self.refresh_plant()
        if kind == "stream":
            stream = self._streams.get(event["link"])
            if stream is not None and stream.bound:
                stream.set_history(event["history"])
            elif stream is not None:
                self._spawn(self._bind(event["link"]))
        self._dispatch(event)

    def _dispatch(self, event: dict) -> None:
        for callback in list(self._watchers):
            try:
                callback(event)
            except Exception:
                log.exception("twin event watcher failed on %s", event.get("type"))

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- key streams, for KeyNetwork ------------------------------------------------------------

    def stream(self, link_id: str, owner: str | None = None) -> KeyStream:
        """The link's stream, unbound (producing nothing) until the service hands it over."""
        if link_id not in self._streams:
            self._streams[link_id] = KeyStream(link_id, self.clock, bound=False)
            self._stream_owner[link_id] = owner or ",".join(self.key_managers) or self.device
            self._spawn(self._bind(link_id))
        return self._streams[link_id]

    def adopt(self, snapshot: dict, owner: str | None = None) -> KeyStream:
        """A saved stream: the link's running one once the service says which; the saved one
        until then (producing nothing: the rate is the service's to say)."""
        link_id = snapshot["link_id"]
        if link_id not in self._streams:
            stream = KeyStream.restore({**snapshot, "rate_bps": 0.0}, self.clock)
            self._streams[link_id] = stream
            self._stream_owner[link_id] = owner or ",".join(self.key_managers) or self.device
            self._spawn(self._bind(link_id, saved=snapshot))
        return self._streams[link_id]

    def forget(self, link_id: str) -> None:
        self._streams.pop(link_id, None)
        self._stream_owner.pop(link_id, None)

    async def fetch_stream(self, link_id: str, device: str, saved: dict | None = None) -> dict:
        if saved is not None:
            return await self.request("POST", f"/streams/{link_id}/adopt", device,
                                      {"secret": saved["secret"], "produced_bits": saved["produced_bits"]})
        return await self.request("GET", f"/streams/{link_id}", device)

    async def _bind(self, link_id: str, saved: dict | None = None) -> None:
        stream, owner = self._streams.get(link_id), self._stream_owner.get(link_id, self.device)
        if stream is None:
            return
        try:
            data = await self.fetch_stream(link_id, owner, saved)
        except TwinError as exc:
            if exc.status != 404:   # 404: not agreed yet; a 'stream' event will bring it
                log.warning("twin: the key stream of link %s for %s: %s", link_id, owner, exc)
            return
        if self._streams.get(link_id) is stream:
            stream.bind(bytes.fromhex(data["secret"]), data["history"])
