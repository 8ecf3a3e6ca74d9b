"""Where light goes in a fibre plant, and what it loses on the way: the optical routes that
could carry a QKD link between two interfaces' attachment points.

Sites and optical switches are joined by spans. A switch passes light from any of its ports
to any other (the two ports' insertion loss and its fabric loss, once per cross-connect); a
site passes nothing on: light arriving there ends at the interface attached at that port, or
on the site's patch panel (a span-less port). A route that crosses a switch at the site of
another QKD node without ending at an interface plugged into that switch passes by that
node: it is an optical bypass of the trusted node there, and says so. Pure functions over
any description of the plant with the attributes below (the levels parse their own).
"""
from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

import networkx as nx

Port = tuple[str, str]
"""(fibre node id, termination point id)."""


class FibreNode(Protocol):
    id: str
    kind: str                        # "site" or "optical-switch"
    site: str
    ports: tuple[str, ...]
    insertion_loss: Mapping[str, float]  # port -> dB
    fabric_loss: float               # a switch's, dB


class FibreSpan(Protocol):
    id: str
    a: Port
    b: Port
    loss_db: float


@dataclass(frozen=True)
class Route:
    start: Port
    end: Port
    spans: tuple[str, ...]
    loss_db: float
    bypasses: tuple[str, ...] = ()  # sites whose trusted node the light passes by


def optical_routes(nodes: Iterable[FibreNode], spans: Iterable[FibreSpan], attachments: Mapping[Port, str],
                   starts: Iterable[Port] | None = None) -> Iterator[Route]:
    """From each of `starts` (default: every attachment point), a route to every other
    attachment point that light reaches: the lowest-loss one through trusted nodes only, and
    for those it reaches no other way, the lowest-loss one that bypasses some.
    `attachments` maps each attachment point to the site of the QKD node plugged there."""
    nodes, spans = {n.id: n for n in nodes}, list(spans)
    span_at = {end: span for span in spans for end in (span.a, span.b)}
    light = _light_graph(nodes, spans, span_at, attachments)
    for start in attachments if starts is None else starts:
        yield from _routes_from(light, nodes, span_at, start, attachments[start])


def _light_graph(nodes: dict[str, FibreNode], spans: list[FibreSpan], span_at: dict[Port, FibreSpan],
                 attachments: Mapping[Port, str]) -> nx.DiGraph:
    """Where light can go, as a directed graph of (direction, port) states weighted by loss:
    light 'arrives' at a port from outside the node, or 'leaves' the node by a port into the
    span or the interface there; ('end', port) is the interface attached at a port. A switch
    crossing that bypasses a trusted node is marked with its site."""
    trusted_sites = set(attachments.values())
    graph = nx.DiGraph()
    for span in spans:
        graph.add_edge(("leave", span.a), ("arrive", span.b), loss=span.loss_db, span=span.id)
        graph.add_edge(("leave", span.b), ("arrive", span.a), loss=span.loss_db, span=span.id)
    for node in nodes.values():
        ports = [(node.id, p) for p in node.ports]
        if node.kind == "optical-switch":
            bypass = node.site if node.site in trusted_sites else None
            for here, there in itertools.permutations(ports, 2):
                loss = node.insertion_loss.get(here[1], 0.0) + node.insertion_loss.get(there[1], 0.0) + node.fabric_loss
                graph.add_edge(("arrive", here), ("leave", there), loss=loss,
                               bypass=bypass if there not in attachments else None)
            for port in ports:
                if port in attachments and port not in span_at:
                    graph.add_edge(("leave", port), ("end", port), loss=0.0)
        else:
            panel = [p for p in ports if p in attachments and p not in span_at]
            for port in ports:
                for end in ([port] if port in attachments else []) + panel:
                    graph.add_edge(("arrive", port), ("end", end), loss=0.0)
    return graph


def _routes_from(light: nx.DiGraph, nodes: dict[str, FibreNode], span_at: dict[Port, FibreSpan], start: Port,
                 own_site: str) -> Iterator[Route]:
    node = nodes.get(start[0])
    if node is None:
        return
    if node.kind == "optical-switch":
        first = [("arrive", start)]
    elif start in span_at:
        first = [("leave", start)]
    else:  # an interface on a site's patch panel reaches the site's spans
        first = [("leave", (node.id, p)) for p in node.ports if (node.id, p) in span_at]
    first = [state for state in first if state in light]
    if not first:
        return

    def trusted_only(u, v, data):  # the switch at the start's own site passes light freely
        return None if data.get("bypass") not in (None, own_site) else data["loss"]

    reached = {start}
    for weight in (trusted_only, "loss"):
        losses, paths = nx.multi_source_dijkstra(light, first, weight=weight)
        for state, loss in sorted(losses.items(), key=lambda item: item[1]):
            if state[0] != "end" or state[1] in reached:
                continue
            reached.add(state[1])
            edges = [light.edges[u, v] for u, v in zip(paths[state], paths[state][1:])]
            yield Route(start, state[1], tuple(e["span"] for e in edges if "span" in e), loss,
                        tuple(dict.fromkeys(e["bypass"] for e in edges if e.get("bypass") not in (None, own_site))))
