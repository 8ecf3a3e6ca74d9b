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


def xpath(schema: Schema, data: etree._Element, select: str, nsmap: dict[str, str]) -> etree._Element:
    """Nodes selected by an XPath 1.0 expression, with their ancestors and list keys.
    Evaluated by libyang over the whole tree; the expression's prefixes come from the
    filter element's namespace declarations (RFC 6241 section 8.9)."""
    expression = _to_module_prefixes(select, nsmap, schema)
    dnode = schema.parse(data, config_only=False, validate=False)
    out_root = etree.Element(data.tag, nsmap=data.nsmap)
    if dnode is None:
        return out_root
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
        if result[0]:
            text = print_xml(_Wrapped(result[0]))
            wrapper = etree.fromstring(f"<w>{text}</w>")
            out_root.extend(list(wrapper))
    finally:
        if result[0]:
            lib.lyd_free_all(result[0])
        free_tree(dnode)
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
