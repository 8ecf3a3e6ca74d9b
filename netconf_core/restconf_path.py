"""RESTCONF resource identifiers (RFC 8040): data resource paths (section 3.5.3) and the
`fields` query parameter (section 4.8.3), resolved against the server's schema. No HTTP and no
datastore here: a path becomes a tuple of `Step`s (a schema node and, for a list entry or a
leaf-list entry, the values that name it), which the rest of the RESTCONF server turns into
libyang paths, element look-ups and URIs.

    /restconf/data/qs-engine-test:interfaces/interface=eth0/vlan
                   ^ module-qualified first step   ^ list keys, percent-encoded, comma-separated

A step's name carries its module when the module changes from its parent's (always on the
first step). Key values are percent-decoded after the path is split on '/' and ',', so
"route=10.0.0.0%2F8" names the key "10.0.0.0/8".
"""
from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass

from .errors import RPCError
from .schema import NodeInfo, Schema

_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_.-]*"
_API_IDENTIFIER = re.compile(rf"(?:({_IDENTIFIER}):)?({_IDENTIFIER})")
DATA_KEYWORDS = frozenset({"container", "list", "leaf", "leaf-list", "anydata", "anyxml"})


@dataclass(frozen=True)
class Step:
    """One step of a data resource path: its schema node, and the key values of a list entry
    (in key order) or the value of a leaf-list entry."""

    info: NodeInfo
    values: tuple[str, ...] = ()


def bad_path(message: str, tag: str = "invalid-value") -> RPCError:
    return RPCError(tag, message, type="protocol")


def resolve(schema: Schema, segments: list[str], base: tuple[Step, ...] = (), *,
            allow_action: bool = False) -> tuple[Step, ...]:
    """The steps that the raw (still percent-encoded) path `segments` name, below `base`.
    Every list and leaf-list step must name its entry; an action may only end the path, and
    only when `allow_action` (a POST invokes it)."""
    steps = list(base)
    for index, segment in enumerate(segments):
        name_part, has_values, values_part = segment.partition("=")
        match = _API_IDENTIFIER.fullmatch(urllib.parse.unquote(name_part))
        if match is None:
            raise bad_path(f"'{urllib.parse.unquote(name_part)}' is not a [module:]name path step")
        module, name = match.group(1), match.group(2)
        parent = steps[-1].info if steps else None
        if parent is not None and parent.keyword not in ("container", "list"):
            raise bad_path(f"'{parent.name}' is a {parent.keyword}: the path cannot go below it")
        if module is None:
            if parent is None:
                raise bad_path(f"the first step '{name}' must name its module (module:{name})")
            namespace = parent.namespace
        else:
            namespace = schema.namespace_of_module(module)
            if namespace is None:
                raise bad_path(f"no module '{module}' on this server", "unknown-namespace")
        info = schema.child(parent.schema_path if parent else None, namespace, name)
        if info is None or (info.keyword not in DATA_KEYWORDS and info.keyword != "action"):
            where = f"under '{parent.name}'" if parent else f"at the top of {module}"
            raise bad_path(f"no data node '{name}' {where}", "unknown-element")
        if info.keyword == "action" and (not allow_action or index != len(segments) - 1):
            raise bad_path(f"'{name}' is an action: only a POST to it, ending the path, invokes it")
        values: tuple[str, ...] = ()
        if info.keyword == "list":
            if not has_values:
                raise bad_path(f"list '{name}' needs its key{'s' if len(info.keys) > 1 else ''} "
                               f"({name}={','.join(info.keys)})")
            values = tuple(urllib.parse.unquote(v) for v in values_part.split(","))
            if len(values) != len(info.keys):
                raise bad_path(f"list '{name}' has {len(info.keys)} key(s) ({', '.join(info.keys)}), "
                               f"the path gives {len(values)}")
        elif info.keyword == "leaf-list":
            if not has_values:
                raise bad_path(f"leaf-list '{name}' needs the value of its entry ({name}=value)")
            values = (urllib.parse.unquote(values_part),)
        elif has_values:
            raise bad_path(f"'{name}' is a {info.keyword}: it takes no '=' values")
        steps.append(Step(info, values))
    return tuple(steps)


def _quoted(value: str) -> str:
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise bad_path("a key value holding both ' and \" cannot be addressed")


def data_path(steps: tuple[Step, ...]) -> str:
    """The libyang (and RFC 7951 instance-identifier) path of the steps: the module where it
    changes, key predicates [key='value']."""
    out, module = "", None
    for step in steps:
        info = step.info
        out += "/" + (info.name if info.module == module else f"{info.module}:{info.name}")
        module = info.module
        if info.keyword == "list":
            out += "".join(f"[{key}={_quoted(value)}]" for key, value in zip(info.keys, step.values))
        elif info.keyword == "leaf-list" and step.values:
            out += f"[.={_quoted(step.values[0])}]"
    return out


def uri_path(steps: tuple[Step, ...]) -> str:
    """The RFC 8040 path of the steps, as it goes after {+restconf}/data."""
    out, module = "", None
    for step in steps:
        info = step.info
        out += "/" + (info.name if info.module == module else f"{info.module}:{info.name}")
        module = info.module
        if step.values:
            out += "=" + ",".join(urllib.parse.quote(v, safe="") for v in step.values)
    return out


# --- fields (RFC 8040 section 4.8.3) ------------------------------------------------------------

Selection = dict[str, "Selection | None"]
"""Selected children by Clark name; a child's value is its own selection, or None for its whole
subtree. List keys are always kept besides."""

_FIELD_TOKEN = re.compile(rf"\s*(?:({_IDENTIFIER}(?::{_IDENTIFIER})?)|([/;()]))")


def parse_fields(schema: Schema, text: str, target: NodeInfo | None) -> Selection:
    """The selection that `fields=text` makes below the target node (None: the datastore,
    whose first steps must name their module)."""
    tokens: list[str] = []
    position = 0
    while position < len(text):
        match = _FIELD_TOKEN.match(text, position)
        if match is None:
            raise bad_path(f"fields '{text}': unexpected '{text[position:]}'")
        tokens.append(match.group(0).strip())
        position = match.end()
    parser = _FieldsParser(schema, tokens, text)
    selection = parser.expression(target)
    if parser.position != len(tokens):
        raise bad_path(f"fields '{text}': unexpected '{tokens[parser.position]}'")
    return selection


class _FieldsParser:
    """fields-expr = path "(" fields-expr ")" / path ";" fields-expr / path;
    path = api-identifier ["/" path]"""

    def __init__(self, schema: Schema, tokens: list[str], text: str):
        self.schema = schema
        self.tokens = tokens
        self.text = text
        self.position = 0

    def peek(self) -> str | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def take(self, expected: str | None = None) -> str:
        token = self.peek()
        if token is None or (expected is not None and token != expected):
            raise bad_path(f"fields '{self.text}': expected {expected or 'a name'}"
                           + (f", found '{token}'" if token else " at the end"))
        self.position += 1
        return token

    def expression(self, parent: NodeInfo | None) -> Selection:
        selection: Selection = {}
        while True:
            self.item(parent, selection)
            if self.peek() != ";":
                return selection
            self.take(";")

    def item(self, parent: NodeInfo | None, selection: Selection) -> None:
        info = self.name(parent)
        chain = [info]
        while self.peek() == "/":
            self.take("/")
            chain.append(self.name(chain[-1]))
        below: Selection | None = None
        if self.peek() == "(":
            self.take("(")
            below = self.expression(chain[-1])
            self.take(")")
        node = selection
        for step in chain[:-1]:
            existing = node.get(step.qname, {})
            if existing is None:  # already selected whole
                return
            node[step.qname] = existing
            node = existing
        last = chain[-1].qname
        if last in node and node[last] is None:
            return
        if below is None or last not in node:
            node[last] = below
        else:
            node[last].update(below)

    def name(self, parent: NodeInfo | None) -> NodeInfo:
        token = self.take()
        if token in "/;()":
            raise bad_path(f"fields '{self.text}': expected a name, found '{token}'")
        if parent is not None and parent.keyword not in ("container", "list"):
            raise bad_path(f"fields '{self.text}': '{parent.name}' has no children")
        module, _, name = token.rpartition(":")
        if module:
            namespace = self.schema.namespace_of_module(module)
            if namespace is None:
                raise bad_path(f"fields '{self.text}': no module '{module}'", "unknown-namespace")
        elif parent is None:
            raise bad_path(f"fields '{self.text}': '{name}' must name its module at the top of the datastore")
        else:
            namespace = parent.namespace
        info = self.schema.child(parent.schema_path if parent else None, namespace, name)
        if info is None or info.keyword not in DATA_KEYWORDS:
            raise bad_path(f"fields '{self.text}': no data node '{name}'"
                           + (f" under '{parent.name}'" if parent else ""), "unknown-element")
        return info
