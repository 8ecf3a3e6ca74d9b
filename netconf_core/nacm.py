"""RFC 8341 NETCONF access control (NACM): the decisions the server asks for.

A `Nacm` is built from the `<nacm>` subtree of running (as libyang prints it) and
answers four questions: may this user run this operation, receive this notification,
write this data node, and which part of a data tree may it read. It holds no session
state; build a new one whenever the NACM configuration changes, passing the same
`NacmCounters` so the denial counters keep counting since the server started.

Decisions follow RFC 8341 sections 3.4.4 (operations), 3.4.5 (data nodes) and 3.4.6
(notifications). Groups come only from the configuration: this server's transport
reports no groups, so `enable-external-groups` changes nothing.

Data trees are lxml elements. A data node's ancestors are walked up to the first
element in the NETCONF base namespace (`<data>`, `<config>`, `<rpc>`) or the YANG
namespace (`<action>`), or to the tree's root: the element below that is a top-level
data node.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Callable

import libyang
from libyang.util import c2str
from lxml import etree

from .ns import BASE, NACM, YANG_XML

NACM_MODULE = "ietf-netconf-acm"
NETCONF_MODULE = "ietf-netconf"

ACCESS_OPERATIONS = frozenset({"create", "read", "update", "delete", "exec"})
WRITE_OPERATIONS = ("create", "update", "delete")
# RFC 8341 3.4.4 step 11: denied without a permitting rule, whatever the schema says
# (the 2011 ietf-netconf module predates the nacm extensions).
DEFAULT_DENY_ALL_OPERATIONS = frozenset({(NETCONF_MODULE, "kill-session"), (NETCONF_MODULE, "delete-config")})
# RFC 8341 3.4.6 step 2: the RFC 5277 events that end a replay or a subscription.
ALWAYS_SENT_NOTIFICATIONS = frozenset({("nc-notifications", "replayComplete"),
                                       ("nc-notifications", "notificationComplete")})
_DATA_KEYWORDS = frozenset({"container", "list", "leaf", "leaf-list", "anydata", "anyxml"})
_WRAPPER_NAMESPACES = frozenset({BASE, YANG_XML})

_NAME = r"[A-Za-z_][\w.-]*"
_STEP = re.compile(rf"(?P<prefix>{_NAME}):(?P<name>{_NAME})(?P<predicates>.*)", re.S)
_PREDICATE = re.compile(rf"""\[\s*(?:(?P<prefix>{_NAME}):{_NAME}|\.)\s*=\s*(?:'[^']*'|"[^"]*")\s*\]""")


class NacmConfigError(ValueError):
    """The NACM configuration cannot be enforced as written (e.g. a rule path that is not
    a node-instance-identifier). The server should refuse such a configuration."""


@dataclass
class NacmCounters:
    """The config false counters of the nacm container (RFC 8341 section 3.5)."""

    denied_operations: int = 0
    denied_data_writes: int = 0
    denied_notifications: int = 0


@dataclass(frozen=True)
class _Step:
    """One step of a rule path: a node name and, for list entries or leaf-list values,
    predicates evaluated by lxml on the candidate element itself."""

    tag: str
    predicates: etree.XPath | None

    def matches(self, element: etree._Element) -> bool:
        return element.tag == self.tag and (self.predicates is None or bool(self.predicates(element)))


@dataclass(frozen=True)
class _Rule:
    name: str
    module: str  # "*" for any module
    rpc_name: str | None = None
    notification_name: str | None = None
    path: tuple[_Step, ...] | None = None
    operations: frozenset[str] = ACCESS_OPERATIONS
    permit: bool = False

    @property
    def has_rule_type(self) -> bool:
        return self.rpc_name is not None or self.notification_name is not None or self.path is not None

    def applies(self, module: str | None, operation: str) -> bool:
        return self.module in ("*", module) and operation in self.operations

    def covers(self, chain: list[etree._Element]) -> bool:
        """A data node matches the path if it is the node selected or one of its descendants."""
        assert self.path is not None
        return len(chain) >= len(self.path) and all(s.matches(e) for s, e in zip(self.path, chain))


@dataclass(frozen=True)
class _RuleList:
    name: str
    groups: frozenset[str]
    rules: tuple[_Rule, ...]


@dataclass(frozen=True)
class _SchemaNode:
    """What NACM needs of a data node's schema node."""

    module: str
    keyword: str
    keys: tuple[str, ...]
    deny_all: bool  # nacm:default-deny-all here or, as libyang compiles it, on an ancestor
    deny_write: bool
    implicit: bool  # a non-presence container: never created or deleted by itself


class Nacm:
    def __init__(self, ctx: libyang.Context, config: etree._Element | None, *,
                 recovery_user: str | None = None, counters: NacmCounters | None = None):
        """config is the <nacm> element of running, or None for RFC 8341's defaults. The
        recovery user's sessions bypass NACM (RFC 8341 section 3.4.1)."""
        self.ctx = ctx
        self.source = etree.tostring(config) if config is not None else b""  # to tell when the rules change
        self.recovery_user = recovery_user
        self.counters = counters if counters is not None else NacmCounters()
        self.enabled = _boolean(config, "enable-nacm", True)
        self.read_default = _action(config, "read-default", "permit")
        self.write_default = _action(config, "write-default", "deny")
        self.exec_default = _action(config, "exec-default", "permit")
        # Kept for reporting only: the transport here reports no groups to add.
        self.enable_external_groups = _boolean(config, "enable-external-groups", True)
        self._groups: dict[str, frozenset[str]] = {}
        for group in NACM.all(config, "groups/group"):
            self._groups[NACM.text(group, "name") or ""] = frozenset(_texts(group, "user-name"))
        self._rule_lists = tuple(_parse_rule_list(element) for element in NACM.all(config, "rule-list"))
        self._module_of_ns = {c2str(m.cdata.ns): m.name() for m in self.ctx}
        self._schema_cache: dict[tuple[str, ...], _SchemaNode | None] = {}
        self._rules_cache: dict[str, tuple[_Rule, ...]] = {}
        self._hiding_cache: dict[str, bool] = {}

    # --- questions the server asks -------------------------------------------

    def groups_of(self, user: str) -> list[str]:
        return [name for name, users in self._groups.items() if user in users]

    def may_exec(self, user: str, module: str, rpc_name: str) -> bool:
        """A protocol operation or YANG RPC (RFC 8341 3.4.4). For an action, use
        `may_exec_action`."""
        if self._bypass(user) or (module, rpc_name) == (NETCONF_MODULE, "close-session"):
            return True
        verdict = self._first_match(user, lambda r: r.applies(module, "exec") and (
            not r.has_rule_type or r.rpc_name in ("*", rpc_name)))
        if verdict is None:
            verdict = not self._operation_denied_by_default(module, rpc_name) and self.exec_default
        if not verdict:
            self.counters.denied_operations += 1
        return verdict

    def may_exec_action(self, user: str, action: etree._Element) -> bool:
        """A YANG action, given as its element inside the request's data path (RFC 8341
        3.4.5: data-node rules with the exec operation)."""
        chain, schema = self._locate(action)
        if schema.keyword != "action":
            raise ValueError(f"{_describe(chain)} is a {schema.keyword}, not an action")
        verdict = self._bypass(user) or self._data_access(user, "exec", chain, schema)
        if not verdict:
            self.counters.denied_operations += 1
        return verdict

    def may_notify(self, user: str, module: str, notification_name: str) -> bool:
        """A top-level notification (RFC 8341 3.4.6); a False answer counts as dropped."""
        if self._bypass(user) or (module, notification_name) in ALWAYS_SENT_NOTIFICATIONS:
            return True
        verdict = self._first_match(user, lambda r: r.applies(module, "read") and (
            not r.has_rule_type or r.notification_name in ("*", notification_name)))
        if verdict is None:
            verdict = not self._default_deny_all(module, notification_name) and self.read_default
        if not verdict:
            self.counters.denied_notifications += 1
        return verdict

    def may_write(self, user: str, op: str, node: etree._Element) -> bool:
        """op is create, update or delete; node sits in a full data tree (for delete, the
        tree before the edit). Each False answer counts one denied data write, so ask
        until the first denial of a request."""
        if op not in WRITE_OPERATIONS:
            raise ValueError(f"write operation must be one of {', '.join(WRITE_OPERATIONS)}, not {op!r}")
        chain, schema = self._locate(node)
        verdict = self._bypass(user) or self._data_access(user, op, chain, schema)
        if not verdict:
            self.counters.denied_data_writes += 1
        return verdict

    def prune(self, user: str, tree: etree._Element) -> etree._Element:
        """`tree` (a wrapper whose children are top-level data nodes) without the nodes the
        user may not read; a list entry whose key may not be read goes whole. When the user may
        read everything, `tree` itself comes back: never change the result in place."""
        if self._bypass(user) or self._unconditional(user, "read"):
            return tree
        tops = _elements(tree)
        if self.read_default and not any("read" in rule.operations for rule in self._rules_for(user)):
            # Only nacm:default-deny-all can hide anything: walk just the subtrees that have it.
            tops = [top for top in tops if self._may_hide(top.tag)]
            if not tops:
                return tree
        result = copy.deepcopy(tree)
        walk = {top.tag for top in tops}
        for top in _elements(result):
            if top.tag in walk:
                self._prune(user, top, [top], ())
        return result

    def _may_hide(self, top_tag: str) -> bool:
        """Whether nacm:default-deny-all marks a node of this top-level node's subtree (or the
        node is unknown to the schema, so that the full walk reports it)."""
        if top_tag not in self._hiding_cache:
            qname = etree.QName(top_tag)
            module = self._module_of_ns.get(qname.namespace or "")
            try:
                snode = list(self.ctx.find_path(f"/{module}:{qname.localname}"))[0] if module else None
            except libyang.LibyangError:
                snode = None
            self._hiding_cache[top_tag] = snode is None or any(
                _has_extension(node, "default-deny-all") for node in snode.iter_tree())
        return self._hiding_cache[top_tag]

    def denied_write_path(self, user: str, before: etree._Element, after: etree._Element) -> str | None:
        """Compare two configuration trees (wrappers whose children are top-level data nodes)
        and return the path of the first node created, changed or deleted that the user may
        not write, or None. The path is in libyang's style: module names as prefixes where
        the module changes, e.g. /qs-nacm-test:switch/port[id='3']/enabled."""
        if self._bypass(user) or all(self._unconditional(user, op) for op in WRITE_OPERATIONS):
            return None
        denied = self._denied_children(user, before, after, [], ())
        if denied is not None:
            self.counters.denied_data_writes += 1
        return denied

    # --- rule processing -----------------------------------------------------

    def _bypass(self, user: str) -> bool:
        return not self.enabled or (self.recovery_user is not None and user == self.recovery_user)

    def _rules_for(self, user: str) -> tuple[_Rule, ...]:
        """The rules that apply to the user, in processing order. A user in no group gets
        none, not even those of rule-lists for group '*' (RFC 8341 3.4.4 step 5)."""
        if user not in self._rules_cache:
            groups = set(self.groups_of(user))
            rules: list[_Rule] = []
            if groups:
                for rule_list in self._rule_lists:
                    if "*" in rule_list.groups or groups & rule_list.groups:
                        rules.extend(rule_list.rules)
            self._rules_cache[user] = tuple(rules)
        return self._rules_cache[user]

    def _unconditional(self, user: str, op: str) -> bool:
        """True when the first of the user's rules that concerns `op` permits it for every
        module and node (module-name "*", no rule type): no node needs to be looked at."""
        for rule in self._rules_for(user):
            if op in rule.operations:
                return rule.permit and rule.module == "*" and not rule.has_rule_type
        return False

    def _first_match(self, user: str, matches: Callable[[_Rule], bool]) -> bool | None:
        """The action of the first rule that matches, or None when none does."""
        for rule in self._rules_for(user):
            if matches(rule):
                return rule.permit
        return None

    def _data_access(self, user: str, op: str, chain: list[etree._Element], schema: _SchemaNode) -> bool:
        verdict = self._first_match(user, lambda r: r.applies(schema.module, op) and (
            not r.has_rule_type or (r.path is not None and r.covers(chain))))
        if verdict is not None:
            return verdict
        if schema.deny_all or (op in WRITE_OPERATIONS and schema.deny_write):
            return False
        if op == "read":
            return self.read_default
        if op == "exec":
            return self.exec_default
        return self.write_default

    def _operation_denied_by_default(self, module: str, rpc_name: str) -> bool:
        return (module, rpc_name) in DEFAULT_DENY_ALL_OPERATIONS or self._default_deny_all(module, rpc_name)

    # --- reads ---------------------------------------------------------------

    def _prune(self, user: str, element: etree._Element, chain: list[etree._Element],
               parent_tags: tuple[str, ...]) -> None:
        tags = parent_tags + (element.tag,)
        schema = self._known_schema_node(tags, chain)
        readable = self._data_access(user, "read", chain, schema) and all(
            self._data_access(user, "read", chain + [key], self._known_schema_node(tags + (key.tag,), [key]))
            for key in _key_leaves(element, schema))
        if not readable:
            element.getparent().remove(element)
        elif schema.keyword in ("container", "list"):
            for child in _elements(element):
                self._prune(user, child, chain + [child], tags)

    # --- writes --------------------------------------------------------------

    def _denied_children(self, user: str, before: etree._Element | None, after: etree._Element | None,
                         chain: list[etree._Element], tags: tuple[str, ...]) -> str | None:
        old = self._index(before, tags)
        new = self._index(after, tags)
        for identity, element in new.items():
            if identity in old:
                denied = self._denied_change(user, old[identity], element, chain, tags)
            else:
                denied = self._denied_subtree(user, "create", element, chain, tags)
            if denied is not None:
                return denied
        for identity, element in old.items():
            if identity not in new:
                denied = self._denied_subtree(user, "delete", element, chain, tags)
                if denied is not None:
                    return denied
        return None

    def _denied_change(self, user: str, old: etree._Element, new: etree._Element,
                       chain: list[etree._Element], parent_tags: tuple[str, ...]) -> str | None:
        tags = parent_tags + (new.tag,)
        schema = self._known_schema_node(tags, chain + [new])
        if schema.keyword in ("container", "list"):
            return self._denied_children(user, old, new, chain + [new], tags)
        if _value(old) != _value(new) and not self._data_access(user, "update", chain + [new], schema):
            return self._path(chain + [new])
        return None

    def _denied_subtree(self, user: str, op: str, element: etree._Element,
                        chain: list[etree._Element], parent_tags: tuple[str, ...]) -> str | None:
        """Creating or deleting a node creates or deletes every node below it too."""
        tags = parent_tags + (element.tag,)
        here = chain + [element]
        schema = self._known_schema_node(tags, here)
        if not schema.implicit and not self._data_access(user, op, here, schema):
            return self._path(here)
        if schema.keyword in ("container", "list"):
            for child in _elements(element):
                denied = self._denied_subtree(user, op, child, here, tags)
                if denied is not None:
                    return denied
        return None

    def _index(self, parent: etree._Element | None, parent_tags: tuple[str, ...]) -> dict[tuple, etree._Element]:
        """Children by identity: name, plus key values for a list entry or the value for a
        leaf-list entry."""
        index: dict[tuple, etree._Element] = {}
        for position, child in enumerate(_elements(parent) if parent is not None else []):
            schema = self._known_schema_node(parent_tags + (child.tag,), [child])
            identity: tuple = (child.tag,)
            if schema.keyword == "list":
                ns = etree.QName(child).namespace
                identity += tuple(child.findtext(f"{{{ns}}}{k}") for k in schema.keys) if schema.keys else (position,)
            elif schema.keyword == "leaf-list":
                identity += (child.text,)
            index[identity] = child
        return index

    def _path(self, chain: list[etree._Element]) -> str:
        """The instance path of the last element of chain, in libyang's style."""
        path, module = "", None
        tags: tuple[str, ...] = ()
        for element in chain:
            tags += (element.tag,)
            schema = self._known_schema_node(tags, chain)
            name = etree.QName(element).localname
            path += f"/{name}" if schema.module == module else f"/{schema.module}:{name}"
            module = schema.module
            ns = etree.QName(element).namespace
            for key in schema.keys:
                path += f"[{key}={_quote(element.findtext(f'{{{ns}}}{key}') or '')}]"
            if schema.keyword == "leaf-list":
                path += f"[.={_quote(element.text or '')}]"
        return path

    # --- schema --------------------------------------------------------------

    def _locate(self, node: etree._Element) -> tuple[list[etree._Element], _SchemaNode]:
        chain = [node]
        parent = node.getparent()
        while parent is not None and etree.QName(parent).namespace not in _WRAPPER_NAMESPACES:
            chain.insert(0, parent)
            parent = parent.getparent()
        return chain, self._known_schema_node(tuple(e.tag for e in chain), chain)

    def _known_schema_node(self, tags: tuple[str, ...], chain: list[etree._Element]) -> _SchemaNode:
        schema = self._schema_node(tags)
        if schema is None:
            raise ValueError(f"{_describe(chain)} is not a data node of the server's schema")
        return schema

    def _schema_node(self, tags: tuple[str, ...]) -> _SchemaNode | None:
        """Schema node of the data path given as Clark names from the top level down."""
        if tags not in self._schema_cache:
            self._schema_cache[tags] = self._find_schema_node(tags)
        return self._schema_cache[tags]

    def _find_schema_node(self, tags: tuple[str, ...]) -> _SchemaNode | None:
        steps = []
        for tag in tags:
            qname = etree.QName(tag)
            module = self._module_of_ns.get(qname.namespace or "")
            if module is None:
                return None
            steps.append(f"{module}:{qname.localname}")
        try:
            snode = list(self.ctx.find_path("/" + "/".join(steps)))[0]
        except libyang.LibyangError:
            return None
        if len(tags) == 1 and snode.keyword() not in _DATA_KEYWORDS:
            return None  # an RPC or notification, not a data node
        return _SchemaNode(
            module=snode.module().name(),
            keyword=snode.keyword(),
            keys=tuple(k.name() for k in snode.keys()) if isinstance(snode, libyang.SList) else (),
            deny_all=_has_extension(snode, "default-deny-all"),
            deny_write=_has_extension(snode, "default-deny-write"),
            implicit=isinstance(snode, libyang.SContainer) and snode.presence() is None,
        )

    def _default_deny_all(self, module: str, name: str) -> bool:
        """Whether the top-level RPC or notification carries nacm:default-deny-all."""
        try:
            snode = list(self.ctx.find_path(f"/{module}:{name}"))[0]
        except libyang.LibyangError:
            return False
        return _has_extension(snode, "default-deny-all")


# --- reading the configuration ------------------------------------------------


def _texts(parent: etree._Element, name: str) -> list[str]:
    return [(node.text or "").strip() for node in NACM.all(parent, name)]


def _boolean(config: etree._Element | None, name: str, default: bool) -> bool:
    value = NACM.text(config, name)
    if value is None:
        return default
    if value not in ("true", "false"):
        raise NacmConfigError(f"nacm/{name} must be true or false, not {value!r}")
    return value == "true"


def _action(config: etree._Element | None, name: str, default: str) -> bool:
    """An action-type leaf as 'is permitted'."""
    value = NACM.text(config, name) or default
    if value not in ("permit", "deny"):
        raise NacmConfigError(f"nacm/{name} must be permit or deny, not {value!r}")
    return value == "permit"


def _parse_rule_list(element: etree._Element) -> _RuleList:
    name = NACM.text(element, "name") or ""
    rules = tuple(_parse_rule(name, rule) for rule in NACM.all(element, "rule"))
    return _RuleList(name, frozenset(_texts(element, "group")), rules)


def _parse_rule(rule_list: str, element: etree._Element) -> _Rule:
    name = NACM.text(element, "name") or ""
    where = f"rule-list {rule_list!r} rule {name!r}"
    action = NACM.text(element, "action")
    if action not in ("permit", "deny"):
        raise NacmConfigError(f"{where}: action must be permit or deny, not {action!r}")
    operations_text = NACM.text(element, "access-operations") or "*"
    operations = ACCESS_OPERATIONS if operations_text == "*" else frozenset(operations_text.split())
    if not operations or not operations <= ACCESS_OPERATIONS:
        raise NacmConfigError(f"{where}: access-operations {operations_text!r} is neither '*' nor a set of "
                              f"{', '.join(sorted(ACCESS_OPERATIONS))}")
    path_element = element.find(NACM("path"))
    return _Rule(
        name=name,
        module=NACM.text(element, "module-name") or "*",
        rpc_name=NACM.text(element, "rpc-name"),
        notification_name=NACM.text(element, "notification-name"),
        path=_parse_path(where, path_element) if path_element is not None else None,
        operations=operations,
        permit=action == "permit",
    )


def _parse_path(where: str, element: etree._Element) -> tuple[_Step, ...]:
    """A node-instance-identifier ('/' or /prefix:name[predicate]... steps) as steps, with
    the prefixes bound by the path element's namespace declarations."""
    path = (element.text or "").strip()
    if path == "/":
        return ()
    if not path.startswith("/"):
        raise NacmConfigError(f"{where}: path {path!r} must start with '/'")
    namespaces = {prefix: ns for prefix, ns in element.nsmap.items() if prefix is not None}

    def namespace(prefix: str) -> str:
        if prefix not in namespaces:
            raise NacmConfigError(f"{where}: path {path!r} uses prefix {prefix!r}, which is not declared")
        return namespaces[prefix]

    steps = []
    for text in _split_steps(where, path):
        match = _STEP.fullmatch(text)
        if match is None:
            raise NacmConfigError(f"{where}: path step {text!r} is not prefix:name[predicate]...")
        predicates = match["predicates"].strip()
        for predicate in _split_predicates(where, predicates):
            if predicate["prefix"] is not None:
                namespace(predicate["prefix"])
        test = etree.XPath(f"self::*{predicates}", namespaces=namespaces) if predicates else None
        steps.append(_Step(f"{{{namespace(match['prefix'])}}}{match['name']}", test))
    return tuple(steps)


def _split_steps(where: str, path: str) -> list[str]:
    """Split at the slashes that are outside predicates and quoted values."""
    steps, current, quote, depth = [], "", "", 0
    for char in path[1:]:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[]":
            depth += 1 if char == "[" else -1
        elif char == "/" and depth == 0:
            steps.append(current)
            current = ""
            continue
        current += char
    if quote or depth:
        raise NacmConfigError(f"{where}: path {path!r} has an unclosed quote or bracket")
    steps.append(current)
    return steps


def _split_predicates(where: str, predicates: str) -> list[re.Match[str]]:
    """Key and leaf-list value predicates ([p:key='v'], [.='v']); positional ones are refused."""
    matches, position = [], 0
    while position < len(predicates):
        match = _PREDICATE.match(predicates, position)
        if match is None:
            raise NacmConfigError(f"{where}: predicate {predicates[position:]!r} is not [prefix:key='value'] "
                                  "or [.='value']")
        matches.append(match)
        position = match.end()
        while position < len(predicates) and predicates[position].isspace():
            position += 1
    return matches


# --- helpers ------------------------------------------------------------------


def _has_extension(snode: libyang.SNode, name: str) -> bool:
    return any(ext.name() == name and ext.module().name() == NACM_MODULE for ext in snode.extensions())


def _elements(parent: etree._Element) -> list[etree._Element]:
    """Child elements, skipping comments and processing instructions."""
    return [child for child in parent if isinstance(child.tag, str)]


def _key_leaves(entry: etree._Element, schema: _SchemaNode) -> list[etree._Element]:
    ns = etree.QName(entry).namespace
    found = (entry.find(f"{{{ns}}}{key}") for key in schema.keys)
    return [leaf for leaf in found if leaf is not None]


def _value(element: etree._Element) -> bytes:
    """A leaf's value, or an anydata/anyxml node's content, for change detection."""
    if len(element):
        return b"".join(etree.tostring(child, method="c14n") for child in element)
    return (element.text or "").encode()


def _quote(value: str) -> str:
    return f"'{value}'" if "'" not in value else f'"{value}"'


def _describe(chain: list[etree._Element]) -> str:
    return "/" + "/".join(str(etree.QName(e)) for e in chain)
