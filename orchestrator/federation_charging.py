"""Charging, disputes, settlement and ratings of the federation platform (orchestrator/
federation.py owns the RPCs and the routes; this is the bookkeeping behind them).

Hops. Every inter-domain link a service's route crosses is a hop with two ends: the sending
domain counts the keys its egress key manager forwarded over it, the receiving domain those
its ingress key manager took in (forwarded inward, or received when that key manager serves
the destination SAE). Each end's agent reports what its key managers counted since its
previous report (`report-delivery`), with the interval in which it read them. Honest key
managers count a key at both ends as it crosses, so the newer of two readings is never below
the older: when it is (the readings more than CLOCK_TOLERANCE_S apart), the difference is a
dispute, and the larger total is brought down to the smaller so that the dispute is recorded
once. Each end keeps its recent readings, and a new reading is compared with the other end's
nearest reading far enough from it in time, not only with the other end's latest (two ends
that report about as often as each other may never be that far apart at their latest). What
both ends confirm (the smaller of the two totals) is what is billed.

Records. One per service, segment and agreement: a re-route closes the records of segments
the service left and opens records for the new ones at their agreement's price. A record is
billed on one hop: its segment's egress, or its ingress in the destination domain. Keys
confirmed late for a closed record (reports lag) still go to it until a newer record of the
same member takes its hop; keys confirmed on a hop before any record is billed on it (a
re-route's new hop, counted by both ends while the platform still sets up the other segments)
go to its first record when it opens, so no record undercounts. Each record keeps its confirmed
totals over time (a checkpoint per CHECKPOINT_S at most), so that a settlement can take a period.

Ratings (ITU-T Y.QKDNf functional requirement 2). Over a sliding window, per member: keys its
segments were given (their ingress counts) and delivered (their egress counts), as the
member's own agent reads both at once (so no lag between them); a dispute takes its excess
off the figure of the end whose total was brought down. Availability is the share of the time
it held segments that they were up (active or degraded; pending time is not counted). Score:
delivery ratio times availability; a member below the threshold, or party to more than
max-disputes disputes, is flagged.
"""
from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, Iterable

from models.federation import (Charge, DeliveryReport, Dispute, EndCount, Rating, RatingPolicy, Settlement,
                               SettlementLine)
from netconf_core.errors import RPCError
from netconf_core.notifications import parse_time

CLOCK_TOLERANCE_S = 0.5  # readings closer than this (clock skew, keys in flight) are not compared
READINGS_KEPT = 32       # an end's recent readings kept for comparison with the other end's
CHECKPOINT_S = 60.0       # a record's confirmed totals are kept at most once per this, for settlements
FLOW_BUCKET_S = 10        # the ratings' figures are summed per member over buckets of this many seconds
MICRO = Decimal("0.000001")
MILLI = Decimal("0.001")
UP = ("active", "degraded")


def iso(epoch: float) -> str:
    """A yang:date-and-time of an epoch time, to the second."""
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def epoch(text: str) -> float:
    return dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00")).timestamp()


@dataclass
class EndTally:
    """One end's total on a hop, when it was last read, and its recent readings."""

    keys: int = 0
    bits: int = 0
    read_start: float | None = None
    read_end: float | None = None
    readings: list[list[float]] = field(default_factory=list)  # [read_start, read_end, keys, bits], oldest first

    def take(self, keys: int, bits: int, read_start: float, read_end: float) -> None:
        self.keys, self.bits = self.keys + keys, self.bits + bits
        self.read_start, self.read_end = read_start, read_end
        self.readings = self.readings[-(READINGS_KEPT - 1):] + [[read_start, read_end, self.keys, self.bits]]

    def bring_down(self, since: int, keys: int, bits: int) -> None:
        """Take a disputed excess off the total and off the readings from index `since` on
        (each later reading is a total that holds it too)."""
        self.keys, self.bits = self.keys - keys, self.bits - bits
        for reading in self.readings[since:]:
            reading[2], reading[3] = reading[2] - keys, reading[3] - bits


@dataclass
class Hop:
    service_id: str
    sender: str
    sender_link: str    # the link's id as the sender advertises it
    receiver: str
    receiver_link: str  # ... and as the receiver does
    sent: EndTally = field(default_factory=EndTally)
    received: EndTally = field(default_factory=EndTally)
    records: list[int] = field(default_factory=list)  # the records billed on it
    credited: tuple[int, int] = (0, 0)  # of `confirmed`, what the records were credited so far

    @property
    def key(self) -> str:
        return f"{self.service_id}/{self.sender}/{self.sender_link}"

    @property
    def confirmed(self) -> tuple[int, int]:
        return min(self.sent.keys, self.received.keys), min(self.sent.bits, self.received.bits)


@dataclass
class ChargingRecord:
    record_id: int
    member_id: str
    service_id: str
    payer: str
    agreement: str | None
    price_per_kbit: str
    start_time: str
    end_time: str | None = None
    keys: int = 0
    bits: int = 0
    segment: int | None = None
    hop: str | None = None      # Hop.key
    disputed_keys: int = 0
    disputed_bits: int = 0
    history: list[list[float]] = field(default_factory=list)  # [epoch, keys, bits]: confirmed totals over time

    @property
    def amount(self) -> Decimal:
        return amount(self.bits, Decimal(self.price_per_kbit))

    def active_during(self, start: float, end: float) -> bool:
        """Open, or confirming keys late, at some time in [start, end)."""
        until = epoch(self.end_time) if self.end_time else float("inf")
        if self.history:
            until = max(until, self.history[-1][0])
        return epoch(self.start_time) < end and until >= start

    def confirmed_by(self, when: float) -> tuple[int, int]:
        """Keys and bits confirmed before `when`."""
        last = [0, 0, 0]
        for checkpoint in self.history:
            if checkpoint[0] >= when:
                break
            last = checkpoint
        return int(last[1]), int(last[2])


@dataclass
class DisputeRecord:
    dispute_id: int
    service_id: str
    hop: str            # the sender's link id
    sender: str
    receiver: str
    sent: tuple[int, int]
    received: tuple[int, int]
    disputed: tuple[int, int]
    records: tuple[int, ...]
    time: float


def amount(bits: int, price: Decimal) -> Decimal:
    return (Decimal(bits) / 1000 * price).quantize(MICRO, ROUND_HALF_EVEN)


def _interval(report: DeliveryReport) -> tuple[float, float]:
    """When the reporting agent read its key managers' counters (epoch seconds)."""
    return (parse_time(report.read_start, "read-start").timestamp(),
            parse_time(report.read_end, "read-end").timestamp())


class ReportError(ValueError):
    """A report the platform cannot take; `element` names the input leaf at fault."""

    def __init__(self, message: str, element: str):
        super().__init__(message)
        self.element = element


class Charging:
    """Hops, records, disputes and the figures behind the ratings; saved as one JSON object."""

    def __init__(self) -> None:
        self.records: dict[int, ChargingRecord] = {}
        self.hops: dict[str, Hop] = {}
        self.disputes: dict[int, DisputeRecord] = {}
        self.flows: dict[str, list] = {}  # "bucket/member" -> [bucket start, member, requested, delivered]
        self.uptime: list[list] = []      # [member, start, end, up]: closed intervals of segments held
        self.holding: dict[str, list] = {}  # "service/member" -> [member, since, up]: the open ones

    # --- records and hops --------------------------------------------------------------------

    def hop(self, service_id: str, sender: str, sender_link: str, receiver: str, receiver_link: str) -> Hop:
        new = Hop(service_id, sender, sender_link, receiver, receiver_link)
        return self.hops.setdefault(new.key, new)

    def open_record(self, member: str, service_id: str, payer: str, segment: int, hop: Hop | None,
                    agreement: str | None, price: Decimal, now: float) -> ChargingRecord:
        """The open record of this segment under this agreement, opened now if there is none."""
        hop_key = hop.key if hop else None
        for record in self.records.values():
            if (record.end_time is None and (record.member_id, record.service_id, record.segment, record.hop,
                                             record.agreement) == (member, service_id, segment, hop_key, agreement)):
                return record
        record = ChargingRecord(max(self.records, default=0) + 1, member, service_id, payer, agreement, str(price),
                                iso(now), segment=segment, hop=hop_key)
        self.records[record.record_id] = record
        if hop is not None:
            hop.records = [r for r in hop.records if self.records[r].member_id != member] + [record.record_id]
            self._credit(hop, now)  # what both ends confirmed before the platform opened it
        return record

    def close_records(self, service_id: str, keep: set[int], now: float) -> None:
        """Close the open records of a service but those in `keep`."""
        for record in self.records.values():
            if record.service_id == service_id and record.end_time is None and record.record_id not in keep:
                record.end_time = iso(now)

    # --- reports -----------------------------------------------------------------------------

    def resolve(self, member: str, service_id: str, count: EndCount) -> Hop | None:
        """The hop a count of `member` is for (None: the end of a local SAE); ReportError if the
        member has no such segment."""
        on_route = any(member in (h.sender, h.receiver) for h in self.hops.values() if h.service_id == service_id) \
            or any(r.member_id == member and r.service_id == service_id for r in self.records.values())
        if not on_route:
            raise ReportError(f"member {member} has no segment of service {service_id}", "service-id")
        if count.link_id is None:
            return None
        for hop in self.hops.values():
            if hop.service_id != service_id:
                continue
            if (count.end, member, count.link_id) in (("egress", hop.sender, hop.sender_link),
                                                      ("ingress", hop.receiver, hop.receiver_link)):
                return hop
        raise ReportError(f"member {member} has no segment of service {service_id} whose {count.end} is link "
                          f"{count.link_id}", "link-id")

    def check_report(self, member: str, report: DeliveryReport) -> list[tuple[EndCount, Hop | None]]:
        """Each count of a report with the hop it is for, once the report's service, links and
        times check out (ReportError, or the RPCError of a malformed time, otherwise); nothing
        is taken yet (take_report)."""
        start, end = _interval(report)
        ends = [(count, self.resolve(member, report.service_id, count)) for count in report.counts]
        if not ends:  # an empty report still has to be of a service the member is on
            self.resolve(member, report.service_id, EndCount("ingress", None, 0, 0))
        for _, hop in ends:
            self.check_times(member, hop, start, end)
        return ends

    def take_report(self, member: str, report: DeliveryReport, ends: list[tuple[EndCount, Hop | None]],
                    now: float) -> list[DisputeRecord]:
        """Take the counts check_report resolved; returns the disputes they revealed."""
        start, end = _interval(report)
        disputes = (self.count(member, hop, count, start, end, now) for count, hop in ends)
        return [dispute for dispute in disputes if dispute is not None]

    def check_times(self, member: str, hop: Hop | None, read_start: float, read_end: float) -> None:
        if read_end < read_start:
            raise ReportError("read-end is before read-start", "read-end")
        if hop is None:
            return
        mine = hop.sent if member == hop.sender else hop.received
        if mine.read_end is not None and read_start < mine.read_start:
            raise ReportError(f"these readings ({iso(read_start)}) are older than those member {member} reported "
                              f"before ({iso(mine.read_start)}) for link {hop.sender_link}", "read-start")

    def count(self, member: str, hop: Hop | None, count: EndCount, read_start: float, read_end: float,
              now: float) -> DisputeRecord | None:
        """Take one end's count; returns the dispute it revealed, if any."""
        self._flow(member, count.keys if count.end == "ingress" else 0, count.keys if count.end == "egress" else 0,
                   now)
        if hop is None:
            return None
        mine, other = (hop.sent, hop.received) if count.end == "egress" else (hop.received, hop.sent)
        mine.take(count.keys, count.bits, read_start, read_end)
        dispute = self._compare(hop, mine, other, now)
        self._credit(hop, now)
        return dispute

    def _compare(self, hop: Hop, mine: EndTally, other: EndTally, now: float) -> DisputeRecord | None:
        """Compare the latest reading of one end with the other end's latest reading well
        before it, and with its earliest reading well after it (a report that arrives late)."""
        before = [i for i, r in enumerate(other.readings) if r[1] + CLOCK_TOLERANCE_S <= mine.read_start]
        after = [i for i, r in enumerate(other.readings) if r[0] >= mine.read_end + CLOCK_TOLERANCE_S]
        latest = len(mine.readings) - 1
        if before and self._exceeds(other.readings[before[-1]], mine.readings[latest]):
            return self._dispute(hop, other, before[-1], mine.readings[latest], now)
        if after and self._exceeds(mine.readings[latest], other.readings[after[0]]):
            return self._dispute(hop, mine, latest, other.readings[after[0]], now)
        return None

    @staticmethod
    def _exceeds(older: list[float], newer: list[float]) -> bool:
        return newer[2] < older[2] or newer[3] < older[3]

    def _dispute(self, hop: Hop, end: EndTally, index: int, newer: list[float], now: float) -> DisputeRecord:
        """Record that `end`'s reading at `index` exceeds the other end's `newer` one, and bring
        `end` down by the excess."""
        older = end.readings[index]
        excess = (int(max(0, older[2] - newer[2])), int(max(0, older[3] - newer[3])))
        sent, received = (older, newer) if end is hop.sent else (newer, older)
        dispute = DisputeRecord(max(self.disputes, default=0) + 1, hop.service_id, hop.sender_link, hop.sender,
                                hop.receiver, (int(sent[2]), int(sent[3])), (int(received[2]), int(received[3])),
                                excess, tuple(hop.records), now)
        self.disputes[dispute.dispute_id] = dispute
        end.bring_down(index, *excess)
        # The end brought down loses the excess from its rating's figure.
        member, role = (hop.sender, "egress") if end is hop.sent else (hop.receiver, "ingress")
        self._flow(member, -excess[0] if role == "ingress" else 0, -excess[0] if role == "egress" else 0, now)
        for record_id in hop.records:
            record = self.records[record_id]
            record.disputed_keys += excess[0]
            record.disputed_bits += excess[1]
        return dispute

    def _flow(self, member: str, requested: int, delivered: int, now: float) -> None:
        start = now // FLOW_BUCKET_S * FLOW_BUCKET_S
        flow = self.flows.setdefault(f"{int(start)}/{member}", [start, member, 0, 0])
        flow[2] += requested
        flow[3] += delivered

    def _credit(self, hop: Hop, now: float) -> None:
        """Credit the hop's records with what its two ends confirmed since the last credit. A
        hop whose records are not open yet (the platform still sets up the route while keys
        cross it) keeps what they confirm until its first record opens."""
        keys, bits = (max(0, a - b) for a, b in zip(hop.confirmed, hop.credited))
        if not hop.records or (not keys and not bits):
            return
        hop.credited = hop.confirmed
        for record_id in hop.records:
            record = self.records[record_id]
            record.keys += keys
            record.bits += bits
            history = record.history
            if len(history) >= 2 and now - history[-2][0] < CHECKPOINT_S:
                history[-1] = [now, record.keys, record.bits]  # the latest checkpoint moves on
            else:
                history.append([now, record.keys, record.bits])

    # --- availability ------------------------------------------------------------------------

    def hold(self, service_id: str, statuses: dict[str, str], now: float) -> None:
        """The segments a service holds now (member -> segment status): closes the intervals
        of those that changed or went, opens the new ones."""
        prefix = f"{service_id}/"
        current = {f"{prefix}{member}": (member, status in UP) for member, status in statuses.items()
                   if status in UP or status == "failed"}
        for key in [k for k in self.holding if k.startswith(prefix)]:
            member, since, up = self.holding[key]
            if current.get(key) != (member, up):
                self.uptime.append([member, since, now, up])
                del self.holding[key]
        for key, (member, up) in current.items():
            self.holding.setdefault(key, [member, now, up])

    # --- ratings -----------------------------------------------------------------------------

    def ratings(self, members: Iterable[str], policy: RatingPolicy, now: float) -> dict[str, Rating]:
        since = now - policy.window
        requested: dict[str, int] = defaultdict(int)
        delivered: dict[str, int] = defaultdict(int)
        for when, member, asked, gave in self.flows.values():
            if when + FLOW_BUCKET_S > since:  # a bucket counts while part of it is in the window
                requested[member] += asked
                delivered[member] += gave
        up: dict[str, float] = defaultdict(float)
        held: dict[str, float] = defaultdict(float)
        for member, start, end, is_up in self.uptime + [[m, s, now, u] for m, s, u in self.holding.values()]:
            overlap = max(0.0, min(end, now) - max(start, since))
            held[member] += overlap
            if is_up:
                up[member] += overlap
        disputes: dict[str, int] = defaultdict(int)
        for d in self.disputes.values():
            if d.time >= since:
                disputes[d.sender] += 1
                disputes[d.receiver] += 1
        out = {}
        for member in members:
            asked, gave = max(0, requested[member]), max(0, delivered[member])
            ratio = min(Decimal(1), Decimal(gave) / Decimal(asked)) if asked else Decimal(1)
            availability = Decimal(up[member] / held[member]) if held[member] > 0 else Decimal(1)
            ratio, availability = ratio.quantize(MILLI), min(Decimal(1), availability).quantize(MILLI)
            score = (ratio * availability).quantize(MILLI)
            out[member] = Rating(member, asked, gave, ratio, availability, disputes[member], score,
                                 score < policy.threshold or disputes[member] > policy.max_disputes)
        return out

    def prune(self, window: int, now: float) -> None:
        """Forget the figures of the ratings that are older than the window."""
        since = now - window
        self.flows = {k: f for k, f in self.flows.items() if f[0] + FLOW_BUCKET_S >= since}
        self.uptime = [u for u in self.uptime if u[2] >= since]

    # --- settlement --------------------------------------------------------------------------

    def settle_period(self, member: str, start: str, end: str) -> Settlement:
        """settle's answer for a period given as the RPC's date-and-time texts (RPCError
        invalid-value when the period ends before it starts)."""
        begin, finish = parse_time(start, "period-start"), parse_time(end, "period-end")
        if finish <= begin:
            raise RPCError("invalid-value", f"period-end {end} is not after period-start {start}",
                           info={"bad-element": "period-end"})
        return self.settle(member, begin.timestamp(), finish.timestamp(), (start, end))

    def settle(self, member: str, start: float, end: float, period: tuple[str, str]) -> Settlement:
        lines: dict[tuple, dict[str, Any]] = {}
        for record in sorted(self.records.values(), key=lambda r: r.record_id):
            if record.member_id == record.payer or member not in (record.member_id, record.payer) \
                    or not record.active_during(start, end):
                continue
            direction, counterparty = ("receivable", record.payer) if record.member_id == member \
                else ("payable", record.member_id)
            (k1, b1), (k0, b0) = record.confirmed_by(end), record.confirmed_by(start)
            line = lines.setdefault((direction, counterparty, record.agreement, record.price_per_kbit),
                                    {"keys": 0, "bits": 0, "dk": 0, "db": 0, "records": []})
            line["keys"] += k1 - k0
            line["bits"] += b1 - b0
            line["records"].append(record.record_id)
        found = [d for d in sorted(self.disputes.values(), key=lambda d: d.dispute_id) if start <= d.time < end]
        for (direction, counterparty, agreement, price), line in lines.items():
            for d in found:
                if set(d.records) & set(line["records"]):
                    line["dk"] += d.disputed[0]
                    line["db"] += d.disputed[1]
        built = tuple(SettlementLine(direction, counterparty, agreement, Decimal(price), line["keys"], line["bits"],
                                     amount(line["bits"], Decimal(price)), line["dk"], line["db"],
                                     tuple(line["records"]))
                      for (direction, counterparty, agreement, price), line in sorted(lines.items()))
        mine = {r.record_id for r in self.records.values() if member in (r.member_id, r.payer)}
        disputes = tuple(self.dispute_view(d) for d in found
                         if member in (d.sender, d.receiver) or set(d.records) & mine)
        total = lambda direction: sum((l.amount for l in built if l.direction == direction), Decimal(0))
        return Settlement(member, *period, built, disputes, total("receivable"), total("payable"))

    # --- views and persistence ---------------------------------------------------------------

    @staticmethod
    def charge(record: ChargingRecord) -> Charge:
        return Charge(record.record_id, record.member_id, record.service_id, record.keys, record.bits,
                      record.start_time, record.end_time, record.agreement, Decimal(record.price_per_kbit),
                      record.amount, record.segment, record.hop.split("/", 2)[2] if record.hop else None,
                      record.disputed_keys, record.disputed_bits)

    @staticmethod
    def dispute_view(d: DisputeRecord) -> Dispute:
        return Dispute(d.dispute_id, d.service_id, d.hop, d.sender, d.receiver, tuple(d.sent), tuple(d.received),
                       tuple(d.disputed), tuple(d.records), iso(d.time))

    def to_json(self) -> dict[str, Any]:
        return {"records": [asdict(r) for r in self.records.values()],
                "hops": [asdict(h) for h in self.hops.values()],
                "disputes": [asdict(d) for d in self.disputes.values()],
                "flows": self.flows, "uptime": self.uptime, "holding": self.holding}

    @classmethod
    def from_json(cls, state: dict[str, Any]) -> Charging:
        charging = cls()
        for raw in state.get("records", []):
            record = ChargingRecord(**raw)
            charging.records[record.record_id] = record
        for raw in state.get("hops", []):
            hop = Hop(**{**raw, "sent": _end_tally(raw["sent"]), "received": _end_tally(raw["received"])})
            hop.credited = tuple(raw["credited"]) if "credited" in raw else hop.confirmed  # older state: all credited
            charging.hops[hop.key] = hop
        for raw in state.get("disputes", []):
            dispute = DisputeRecord(**{**raw, **{k: tuple(raw[k]) for k in ("sent", "received", "disputed",
                                                                           "records")}})
            charging.disputes[dispute.dispute_id] = dispute
        charging.flows, charging.uptime = state.get("flows", {}), state.get("uptime", [])
        charging.holding = state.get("holding", {})
        return charging


def _end_tally(raw: dict[str, Any]) -> EndTally:
    tally = EndTally(**raw)
    if not tally.readings and tally.read_end is not None:  # older state: its latest reading only
        tally.readings = [[tally.read_start, tally.read_end, tally.keys, tally.bits]]
    return tally
