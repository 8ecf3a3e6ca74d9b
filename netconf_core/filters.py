"""Filters on get and get-config: subtree (RFC 6241 section 6) and xpath (:xpath capability)."""
from __future__ import annotations

import copy
import re

from _libyang import ffi, lib
from lxml import etree

from .errors import RPCError
from .schema import Schema, free_tree, print_xml

_TOKEN = re.compile(r"""('[^']*'|"[^"]*")|(?<![\w.:-])([A-Za-z_][\w.-]*):(?!:)""")


def subtree(schema: Schema, data: etree._Element, filter_nodes: list[etree._Element]) -> etree._Element:
    """Select from `data` (a datastore root) what the filter's top-level nodes ask for."""
    whole, keep = _select(data, filter_nodes)
    return _copy_marked(schema, data, whole, keep)


def subtree_xml(schema: Schema, data: etree._Element, filter_nodes: list[etree._Element]) -> bytes:
    """`subtree`, serialised: the subtrees selected whole are written from `data` as they
    are, without the copy that a result tree would need (most of the cost of a get)."""
    whole, keep = _select(data, filter_nodes)
    root = etree.Element(data.tag, nsmap=data.nsmap)
    root.text = "-"
    start, end = etree.tostring(root).split(b">-<")
    return b"".join([start, b">", *(etree.tostring(child if child in whole else _copy_kept(schema, child, whole, keep))
                                    for child in data if child in whole or child in keep), b"<", end])


def _select(data: etree._Element, filter_nodes: list[etree._Element]) -> tuple[set, set]:
    """The nodes selected whole, and those kept only as the path to a selection."""
    whole: set[etree._Element] = set()
    keep: set[etree._Element] = set()
    _mark(data, [f for f in filter_nodes if isinstance(f.tag, str)], whole, keep, top=True)
    return whole, keep


def _matches(data_parent: etree._Element, flt: etree._Element) -> list[etree._Element]:
    q = etree.QName(flt)
    if q.namespace:
        return list(data_parent.iterchildren(flt.tag))
    return [c for c in data_parent if isinstance(c.tag, str) and etree.QName(c).localname == q.localname]


def _is_content_match(flt: etree._Element) -> bool:
    return len(flt) == 0 and bool((flt.text or "").strip())


def _mark(data_parent, filters, whole, keep, top=False) -> bool:
    """Mark what `filters` select under `data_parent`; False when a content match fails."""
    content = [f for f in filters if _is_content_match(f)]
    others = [f for f in filters if not _is_content_match(f)]
    matched_content = []
    for flt in content:
        hits = [d for d in _matches(data_parent, flt) if (d.text or "").strip() == flt.text.strip()]
        if not hits:
            return False
        matched_content += hits
    if not others and content and not top:
        whole.add(data_parent)
        return True
    whole.update(matched_content)
    selected = bool(matched_content)
    for flt in others:
        for d in _matches(data_parent, flt):
            if len(flt) == 0:
                whole.add(d)
                selected = True
            elif _mark(d, [c for c in flt if isinstance(c.tag, str)], whole, keep):
                keep.add(d)
                selected = True
    return selected


def _copy_marked(schema: Schema, data: etree._Element, whole: set, keep: set) -> etree._Element:
    out = etree.Element(data.tag, nsmap=data.nsmap)
    for child in data:
        if child in whole:
            out.append(copy.deepcopy(child))
        elif child in keep:
            out.append(_copy_kept(schema, child, whole, keep))
    return out


def _copy_kept(schema: Schema, node: etree._Element, whole: set, keep: set) -> etree._Element:
    info = schema.node_for(node)
    keys = {f"{{{info.namespace}}}{k}" for k in info.keys} if info else set()
    out = etree.Element(node.tag, nsmap=node.nsmap)
    for child in node:
        if child in whole or child.tag in keys:
            out.append(copy.deepcopy(child))
        elif child in keep:
            out.append(_copy_kept(schema, child, whole, keep))
    return out


# Node visits an xpath filter may be expected to cost: libyang makes some 7 million a second,
# so an expression within the budget is answered in a second or two at most.
XPATH_BUDGET = 10_000_000
XPATH_COST_APP_TAG = "xpath-cost-exceeded"
_SCAN = re.compile(r"//|\b(?:descendant|descendant-or-self|following|preceding)::")


def xpath(schema: Schema, data: etree._Element, select: str, nsmap: dict[str, str],
          budget: int = XPATH_BUDGET) -> etree._Element:
    """Nodes selected by an XPath 1.0 expression, with their ancestors and list keys.
    Evaluated by libyang over the whole tree; the expression's prefixes come from the
    filter element's namespace declarations (RFC 6241 section 8.9). The expression is
    refused (too-big) when its estimated cost (`xpath_cost`) exceeds `budget`."""
    expression = xpath_expression(schema, data, select, nsmap, budget)
    return xpath_tree(data, xpath_select(schema, b"".join(etree.tostring(c) for c in data), expression, select))


def xpath_expression(schema: Schema, data: etree._Element, select: str, nsmap: dict[str, str],
                     budget: int = XPATH_BUDGET) -> str:
    """The filter's expression with module-name prefixes, once its cost over `data` is
    known to be within `budget`; RPCError otherwise."""
    nodes = sum(1 for _ in data.iter())
    scans, cost = xpath_cost(select, nodes)
    if cost > budget:
        raise RPCError("too-big", f"xpath filter refused: {scans} nested descendant scans over {nodes} nodes "
                       f"may cost {nodes}^{scans} node visits, more than this server's budget of {budget}; "
                       "use fewer '//' nested in predicates, or a subtree filter",
                       app_tag=XPATH_COST_APP_TAG, info={"bad-element": "filter"})
    return _to_module_prefixes(select, nsmap, schema)


def xpath_cost(select: str, nodes: int) -> tuple[int, int]:
    """A static upper estimate of the work of an xpath expression over `nodes` nodes: the
    greatest number of descendant scans ('//', descendant, following, preceding axes) nested
    one in another's predicate, and nodes to that power. A predicate runs once per node of
    its context, which may be every node: a scan in a predicate of a scan costs n x n, and
    the xpath bomb //*[count(//*[count(//*) > 0]) > 0] n x n x n. A scanning predicate with no
    scan above it counts its context as one more scan (a list may hold every node)."""
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "''", select)  # brackets in literals are not predicates
    deepest = 0
    frames = [[0, False]]  # the expression, then each open predicate: scans above it, whether it scans

    def close(predicate: bool) -> None:
        nonlocal deepest
        above, scans = frames.pop()
        if scans:
            deepest = max(deepest, above + 1 + (1 if predicate and above == 0 else 0))

    for match in re.finditer(r"\[|\]|" + _SCAN.pattern, text):
        token = match.group()
        if token == "[":
            above, scans = frames[-1]
            frames.append([above + (1 if scans else 0), False])
        elif token == "]":
            if len(frames) > 1:
                close(predicate=True)
        else:
            frames[-1][1] = True
    while len(frames) > 1:  # unbalanced: libyang will refuse it, but not before this estimate
        close(predicate=True)
    close(predicate=False)
    deepest = max(deepest, 1)
    return deepest, nodes ** deepest


def xpath_select(schema: Schema, xml: bytes, expression: str, select: str) -> str:
    """The nodes `expression` selects in the document `xml` (top-level data nodes), with their
    ancestors and list keys, as libyang prints them. libyang only, no lxml: this may run in a
    worker thread (libyang's calls release the GIL)."""
    dnode = schema.parse_xml(xml, config_only=False, validate=False)
    if dnode is None:
        return ""
    result = ffi.new("struct lyd_node **")
    found = ffi.new("struct ly_set **")
    try:
        if lib.lyd_find_xpath(dnode.cdata, expression.encode(), found) != lib.LY_SUCCESS:
            err = schema.last_error()
            raise RPCError("invalid-value", f"invalid xpath filter '{select}': {err.message}",
                           type="protocol", info={"bad-element": "filter"})
        for i in range(found[0].count):
            node = found[0].dnodes[i]
            dup = ffi.new("struct lyd_node **")
            flags = lib.LYD_DUP_RECURSIVE | lib.LYD_DUP_WITH_PARENTS
            if lib.lyd_dup_single(node, ffi.NULL, flags, dup) != lib.LY_SUCCESS:
                continue
            top = dup[0]
            while top.parent:
                top = ffi.cast("struct lyd_node *", top.parent)
            if result[0]:
                lib.lyd_merge_siblings(result, top, lib.LYD_MERGE_DESTRUCT)
            else:
                result[0] = top
        lib.ly_set_free(found[0], ffi.NULL)
        return print_xml(_Wrapped(result[0])) if result[0] else ""
    finally:
        if result[0]:
            lib.lyd_free_all(result[0])
        free_tree(dnode)


def xpath_tree(data: etree._Element, selected_xml: str) -> etree._Element:
    """The reply's <data> (the root of `data`) holding what `xpath_select` printed."""
    out_root = etree.Element(data.tag, nsmap=data.nsmap)
    if selected_xml:
        out_root.extend(list(etree.fromstring(f"<w>{selected_xml}</w>")))
    return out_root


class _Wrapped:
    """Gives a raw lyd_node the `.cdata` that print_xml expects."""

    def __init__(self, cdata):
        self.cdata = cdata


def _to_module_prefixes(select: str, nsmap: dict[str, str], schema: Schema) -> str:
    def replace(match: re.Match) -> str:
        if match.group(1):
            return match.group(1)
        prefix = match.group(2)
        namespace = nsmap.get(prefix)
        if namespace is None:
            raise RPCError("invalid-value", f"xpath filter uses prefix '{prefix}' with no namespace "
                           "declaration", type="protocol", info={"bad-element": "filter"})
        module = schema.module_of_namespace(namespace)
        if module is None:
            raise RPCError("unknown-namespace", f"xpath filter names unknown namespace '{namespace}'",
                           type="protocol", info={"bad-element": "filter", "bad-namespace": namespace})
        return f"{module}:"

    return _TOKEN.sub(replace, select)
