"""Parts of the server's extension points (netconf_core.server): the access policy a server
asks for every read, write and notification of a session, and which top-level nodes a
<get> filter can select, so that a state provider runs only for requests that can see what
it serves."""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Callable, Iterable, Protocol

from lxml import etree

if TYPE_CHECKING:
    from .nacm import Nacm
    from .notifications import Event
    from .schema import Schema
    from .session import Session

# A top-level node: (namespace, name); name None for every top-level node of the namespace.
TopNode = tuple[str, "str | None"]


class AccessPolicy(Protocol):
    """What a session may see and do, asked by the server for every request:

    - `prune(session, tree)`: the part of `tree` (running, or running with state) the session
      may read; returns a new tree or `tree` itself, never changes `tree`;
    - `check_write(session, before, after)`: raise RPCError (access-denied) when the session
      may not turn configuration `before` into `after`;
    - `may_notify(session, event)`: whether the session receives a notification.
    """

    def prune(self, session: Session, tree: etree._Element) -> etree._Element: ...

    def check_write(self, session: Session, before: etree._Element, after: etree._Element) -> None: ...

    def may_notify(self, session: Session, event: Event) -> bool: ...


class NacmAccess:
    """The default policy: the server's NACM rules (RFC 8341), as running holds them now. A
    server whose rules depend on data wraps it and narrows what it allows (see
    orchestrator.federation)."""

    def __init__(self, nacm: Callable[[], Nacm]):
        self._nacm = nacm  # the rules in force; they change with running

    def prune(self, session: Session, tree: etree._Element) -> etree._Element:
        return self._nacm().prune(session.username, tree)

    def check_write(self, session: Session, before: etree._Element, after: etree._Element) -> None:
        from .errors import RPCError

        denied = self._nacm().denied_write_path(session.username, before, after)
        if denied is not None:
            raise RPCError("access-denied", f"user '{session.username}' may not write {denied}",
                           type="application", path=denied)

    def may_notify(self, session: Session, event: Event) -> bool:
        if event.module == "nc-notifications":  # RFC 8341 3.4.6: config-change events are sent to all
            return True
        return self._nacm().may_notify(session.username, event.module, event.name)


def provider_paths(schema: Schema, path: str | Iterable[str] | None) -> frozenset[TopNode] | None:
    """The top-level nodes named by `path`: "/module:node" (deeper steps are ignored: the
    provider is called for its top-level node) or "/module:*"; None for every request."""
    if path is None:
        return None
    nodes = set()
    for one in [path] if isinstance(path, str) else path:
        match = re.fullmatch(r"/([\w.-]+):([\w.-]+|\*)(/.*)?", one.strip())
        namespace = schema.namespace_of_module(match.group(1)) if match else None
        if namespace is None:
            raise ValueError(f"{one!r} is not /module:node of a loaded module")
        nodes.add((namespace, None if match.group(2) == "*" else match.group(2)))
    return frozenset(nodes)


def filter_selects(flt: etree._Element | None) -> frozenset[TopNode] | None:
    """The top-level nodes a <get> filter can select; None when it may select any (no filter,
    an element without namespace, an xpath that does not start with /prefix:name)."""
    if flt is None:
        return None
    if flt.get("type", "subtree") == "subtree":
        nodes = set()
        for child in flt:
            if not isinstance(child.tag, str):
                continue
            qname = etree.QName(child)
            if not qname.namespace:
                return None
            nodes.add((qname.namespace, qname.localname))
        return frozenset(nodes)
    return _xpath_selects(flt.get("select", ""), {k: v for k, v in flt.nsmap.items() if k})


def _xpath_selects(select: str, prefixes: dict[str, str]) -> frozenset[TopNode] | None:
    nodes = set()
    for branch in _top_level_union(select):
        match = re.match(r"\s*/([\w.-]+):([\w.-]+|\*)\s*(?=$|[/\[])", branch)
        if match is None or match.group(1) not in prefixes:
            return None  # //, a relative path, a function, no prefix: it may select anything
        nodes.add((prefixes[match.group(1)], None if match.group(2) == "*" else match.group(2)))
    return frozenset(nodes)


def _top_level_union(select: str) -> list[str]:
    """The branches of `a | b | c`, not splitting inside predicates, parentheses or strings."""
    branches, depth, quote, start = [], 0, "", 0
    for i, char in enumerate(select):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[(":
            depth += 1
        elif char in "])":
            depth -= 1
        elif char == "|" and depth == 0:
            branches.append(select[start:i])
            start = i + 1
    branches.append(select[start:])
    return branches


def may_select(selected: frozenset[TopNode] | None, served: frozenset[TopNode] | None) -> bool:
    """Whether a request that can select `selected` may see data a provider of `served` gives."""
    if selected is None or served is None:
        return True
    return any(ns == s_ns and (name is None or s_name is None or name == s_name)
               for ns, name in selected for s_ns, s_name in served)
