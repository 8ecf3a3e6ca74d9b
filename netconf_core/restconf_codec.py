"""RESTCONF encodings: JSON (RFC 7951) and XML bodies to and from the engine's lxml trees,
through libyang in both directions, so that what is read and written is typed and encoded
exactly as libyang (the engine's validator) has it.

- Request bodies are parsed by libyang into the chain of the target's ancestors (a libyang
  tree built from the path), then printed as XML: the engine's edit path (netconf_core.edit)
  takes that tree as it takes an <edit-config>'s <config>.
- Replies are lxml trees cut from a datastore (the target and the keys of its ancestors):
  libyang prints them as JSON; XML is the elements themselves.
- Errors are `ietf-restconf:errors` (RFC 8040 section 7.1), YANG Patch status
  `ietf-yang-patch:yang-patch-status` (RFC 8072 section 2.3), both written here (yang-data
  structures, which libyang 2.1 cannot print).
"""
from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field

from _libyang import ffi, lib
from lxml import etree

from . import ns
from .datastore import copy_in_scope
from .errors import BASE_NS, RPCError
from .restconf_path import DATA_KEYWORDS, Step, data_path
from .schema import Schema, _steps, qualified_path

JSON, XML = "json", "xml"
RESTCONF_NS = ns.RESTCONF
YANG_PATCH_NS = ns.YANG_PATCH
WD_NS = ns.WITH_DEFAULTS  # the metadata libyang reads
WD_ATTR_NS = ns.DEFAULT_ATTR  # RFC 6243 section 6, as the server tags
YANG_ACTION = ns.YANG_XML("action")
CONFIG_TAG = f"{{{BASE_NS}}}config"
FORMATS = {JSON: lib.LYD_JSON, XML: lib.LYD_XML}
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, remove_blank_text=True, huge_tree=False)


def malformed(message: str) -> RPCError:
    return RPCError("malformed-message", message, type="rpc")


# --- libyang trees ---------------------------------------------------------------------------


class _LyTree:
    """A libyang tree this module owns (its first top-level node), freed on exit."""

    def __init__(self, top=ffi.NULL):
        self.top = top

    def __enter__(self) -> _LyTree:
        return self

    def __exit__(self, *exc) -> None:
        if self.top:
            lib.lyd_free_all(self.top)
            self.top = ffi.NULL


def _new_chain(schema: Schema, steps: tuple[Step, ...], tree: _LyTree):
    """Create the nodes of `steps` (containers, list and leaf-list entries with their keys) as
    the new tree `tree`; returns the last one, or NULL for no steps."""
    if not steps:
        return ffi.NULL
    path = data_path(steps).encode()
    top = ffi.new("struct lyd_node **")
    if lib.lyd_new_path(ffi.NULL, schema.ctx.cdata, path, ffi.NULL, 0, top) != lib.LY_SUCCESS:
        raise schema.last_error()
    tree.top = top[0]
    found = ffi.new("struct lyd_node **")
    if lib.lyd_find_path(tree.top, path, 0, found) != lib.LY_SUCCESS:
        raise schema.last_error()
    return found[0]


def canonical_steps(schema: Schema, steps: tuple[Step, ...]) -> tuple[Step, ...]:
    """The steps with their key and leaf-list values as libyang writes them (canonical, e.g.
    uint 007 -> 7); a value its type refuses is an invalid-value error."""
    entries = [i for i, step in enumerate(steps) if step.values]
    if not entries:
        return steps
    last = entries[-1]
    with _LyTree() as tree:
        node = _new_chain(schema, steps[: last + 1], tree)
        values: dict[int, tuple[str, ...]] = {}
        for index in reversed(range(last + 1)):
            step = steps[index]
            if step.info.keyword == "list":
                values[index] = tuple(_child_value(node, key) for key in step.info.keys)
            elif step.info.keyword == "leaf-list":
                values[index] = (ffi.string(lib.lyd_get_value(node)).decode(),)
            node = ffi.cast("struct lyd_node *", node.parent) if node.parent else ffi.NULL
    return tuple(Step(step.info, values.get(i, step.values)) for i, step in enumerate(steps))


def _child_value(node, name: str) -> str:
    child = lib.lyd_child(node)
    while child:
        if ffi.string(child.schema.name).decode() == name:
            return ffi.string(lib.lyd_get_value(child)).decode()
        child = child.next
    return ""


# --- request bodies ----------------------------------------------------------------------------


@dataclass
class Body:
    """A request body as the edit path takes it: `config` (a <config> element holding the
    ancestors of the body's nodes, with their keys, and the nodes), and `nodes`, the body's
    top-level data nodes inside it."""

    config: etree._Element
    nodes: list[etree._Element] = field(default_factory=list)


def json_members(body: bytes) -> dict:
    """The JSON object a body holds; a body that is not one is malformed."""
    try:
        value = json.loads(body)
    except (ValueError, RecursionError) as err:
        raise malformed(f"the body is not JSON: {err}") from None
    if not isinstance(value, dict):
        raise malformed("the body must be a JSON object")
    return value


def xml_root(body: bytes) -> etree._Element:
    try:
        root = etree.fromstring(body, _PARSER)
    except etree.XMLSyntaxError as err:
        raise malformed(f"the body is not well-formed XML: {err}") from None
    if root is None or not isinstance(root.tag, str):
        raise malformed("the body holds no XML element")
    return root


def qualify_members(schema: Schema, members: dict, parent: Step | None, lenient: bool) -> dict:
    """RFC 7951 section 4: the body's top-level member names carry their module. Leniently
    (`lenient`), a bare name is taken in the parent's module, or at the top of a datastore in
    the one module that has a top-level node of that name; and a member whose value is null
    (which RFC 7951 gives no node but inside an empty type's [null]) is taken as absent."""
    if lenient:
        members = _without_nulls(members)
    out = {}
    for name, value in members.items():
        if ":" not in name:
            if not lenient:
                raise malformed(f"member '{name}' must be namespace-qualified (module:{name}), RFC 7951 section 4")
            if parent is not None:
                module = parent.info.module
            else:
                owners = [m for m, _, ns in schema.module_list if schema.child(None, ns, name) is not None]
                if len(owners) != 1:
                    raise malformed(f"member '{name}' names " + ("no top-level node" if not owners else
                                    f"a top-level node of several modules ({', '.join(owners)})")
                                    + ": qualify it as module:name")
                module = owners[0]
            name = f"{module}:{name}"
        out[name] = value
    return out


def _without_nulls(value):
    if isinstance(value, dict):
        return {name: _without_nulls(v) for name, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]  # [null], the empty type's value, stays
    return value


def parse_body(schema: Schema, parent: tuple[Step, ...], content: bytes, fmt: str, *,
               config_only: bool = True) -> Body:
    """`content` (data nodes encoded as `fmt`, already qualified) parsed by libyang as children
    of the node `parent` names (the top of the datastore when empty)."""
    parse_flags = lib.LYD_PARSE_ONLY | lib.LYD_PARSE_STRICT | (lib.LYD_PARSE_NO_STATE if config_only else 0)
    with _LyTree() as tree:
        out = ffi.new("struct lyd_node **")
        ret = lib.lyd_parse_data_mem(schema.ctx.cdata, _wrap(schema, parent, content, fmt), FORMATS[fmt],
                                     parse_flags, 0, out)
        tree.top = out[0]
        if ret != lib.LY_SUCCESS:
            raise schema.last_error()
        config = _to_lxml(tree.top, CONFIG_TAG)
    holder = find(schema, config, parent) if parent else config
    keys = set(_key_tags(parent[-1])) if parent else set()
    return Body(config, [child for child in holder if isinstance(child.tag, str) and child.tag not in keys]
                if holder is not None else [])


def _wrap(schema: Schema, parent: tuple[Step, ...], content: bytes, fmt: str) -> bytes:
    """`content` (one data node or operation in XML; JSON members, qualified) inside the
    ancestors that `parent` names, with their keys: one document from the top of the
    datastore, which libyang parses, and whose errors it reports at their full path."""
    if not parent:
        return content
    with _LyTree() as tree:
        _new_chain(schema, parent, tree)
        if fmt == XML:
            chain = _to_lxml(tree.top, CONFIG_TAG)
            find(schema, chain, parent).append(xml_root(content))
            return b"".join(etree.tostring(c) for c in chain)
        chain = json.loads(_print(tree.top, lib.LYD_JSON, lib.LYD_PRINT_WITHSIBLINGS | lib.LYD_PRINT_KEEPEMPTYCONT))
    inner, module = chain, None
    for step in parent:
        info = step.info
        value = inner[info.name if info.module == module else f"{info.module}:{info.name}"]
        inner, module = (value[0] if info.keyword == "list" else value), info.module
    for name, value in json_members(content).items():
        prefix, _, local = name.rpartition(":")
        inner[local if prefix == module else name] = value  # RFC 7951 section 4: the simple name below
    return json.dumps(chain).encode()


def _key_tags(step: Step) -> list[str]:
    return [f"{{{step.info.namespace}}}{key}" for key in step.info.keys]


def _to_lxml(top, root_tag: str, flags: int = 0) -> etree._Element:
    root = etree.Element(root_tag, nsmap={None: etree.QName(root_tag).namespace})
    if top:
        # Empty non-presence containers too: they may be the parents of what a body holds.
        text = _print(top, lib.LYD_XML, lib.LYD_PRINT_WITHSIBLINGS | lib.LYD_PRINT_KEEPEMPTYCONT | flags)
        if text:
            root.extend(list(etree.fromstring(b"<w>" + text + b"</w>", _PARSER)))
    return root


def _print(node, fmt: int, flags: int = 0) -> bytes:
    buf = ffi.new("char **")
    if lib.lyd_print_mem(buf, node, fmt, lib.LYD_PRINT_SHRINK | flags) != lib.LY_SUCCESS:
        raise RPCError("operation-failed", "cannot print data tree")
    try:
        return ffi.string(buf[0]) if buf[0] else b""
    finally:
        lib.free(buf[0])


def path_config(schema: Schema, steps: tuple[Step, ...]) -> Body:
    """A <config> naming the node `steps` address, for an edit without a body (delete): the
    ancestors with their keys, and the node itself (a leaf without value)."""
    last = steps[-1].info
    with_node = last.keyword in ("container", "list", "leaf-list")
    chain = steps if with_node else steps[:-1]
    with _LyTree() as tree:
        _new_chain(schema, chain, tree)
        config = _to_lxml(tree.top, CONFIG_TAG)
    if with_node:
        return Body(config, [find(schema, config, steps)])
    holder = find(schema, config, chain) if chain else config
    node = etree.SubElement(holder, last.qname, nsmap={None: last.namespace})
    return Body(config, [node])


# --- finding and cutting trees -------------------------------------------------------------------


def text_value(schema: Schema, element: etree._Element) -> str:
    """A leaf's value as RFC 7951 writes it: an XML prefix before ':' becomes the module name
    of its namespace (identityref values)."""
    text = (element.text or "").strip()
    prefix, colon, rest = text.partition(":")
    if colon and prefix in element.nsmap:
        module = schema.module_of_namespace(element.nsmap[prefix])
        if module:
            return f"{module}:{rest}"
    return text


def matches(schema: Schema, element: etree._Element, step: Step) -> bool:
    info = step.info
    if element.tag != info.qname:
        return False
    if info.keyword == "list":
        for key, value in zip(info.keys, step.values):
            leaf = element.find(f"{{{info.namespace}}}{key}")
            if leaf is None or (text_value(schema, leaf) != value and (leaf.text or "").strip() != value):
                return False
    elif info.keyword == "leaf-list":
        return text_value(schema, element) == step.values[0] or (element.text or "").strip() == step.values[0]
    return True


def find(schema: Schema, root: etree._Element, steps: tuple[Step, ...]) -> etree._Element | None:
    """The element of `root`'s tree that `steps` (canonical values) address, or None."""
    node = root
    for step in steps:
        node = next((c for c in node.iterchildren(step.info.qname) if matches(schema, c, step)), None)
        if node is None:
            return None
    return node


def cut(schema: Schema, root: etree._Element, steps: tuple[Step, ...]) -> etree._Element | None:
    """A new tree holding only the node `steps` address (a deep copy) and its ancestors, with
    their keys; None when the node is not in `root`."""
    out = etree.Element(root.tag, nsmap=root.nsmap)
    holder, node = out, root
    for index, step in enumerate(steps):
        node = next((c for c in node.iterchildren(step.info.qname) if matches(schema, c, step)), None)
        if node is None:
            return None
        if index == len(steps) - 1:
            holder.append(copy_in_scope(node))
        else:
            shell = etree.SubElement(holder, node.tag, nsmap=node.nsmap)
            for tag in _key_tags(step):
                key = node.find(tag)
                if key is not None:
                    shell.append(copy_in_scope(key))
            holder = shell
    return out


def nonconfig(schema: Schema, tree: etree._Element) -> etree._Element:
    """`tree` with only its state (config false) nodes and what leads to them (ancestors,
    keys): content=nonconfig (RFC 8040 section 4.8.1)."""
    out = etree.Element(tree.tag, nsmap=tree.nsmap)
    for child in tree:
        kept = _state_of(schema, child, None)
        if kept is not None:
            out.append(kept)
    return out


def _state_of(schema: Schema, element: etree._Element, parent_path: str | None) -> etree._Element | None:
    if not isinstance(element.tag, str):
        return None
    qname = etree.QName(element)
    info = schema.child(parent_path, qname.namespace or "", qname.localname)
    if info is None:
        return None
    if not info.config:
        return copy_in_scope(element)
    if info.keyword not in ("container", "list"):
        return None
    kept = [k for k in (_state_of(schema, c, info.schema_path) for c in element
                        if isinstance(c.tag, str) and etree.QName(c).localname not in info.keys) if k is not None]
    if not kept:
        return None
    shell = etree.Element(element.tag, nsmap=element.nsmap)
    shell.extend(copy_in_scope(k) for k in element if isinstance(k.tag, str) and etree.QName(k).localname in info.keys)
    shell.extend(kept)
    return shell


def limit_depth(schema: Schema, element: etree._Element, info, depth: int, level: int = 1) -> None:
    """Remove, in place, the descendants of `element` (at depth `level`) deeper than `depth`;
    list keys stay, so that every entry remains addressable (RFC 8040 section 4.8.2)."""
    if info is None or info.keyword not in ("container", "list"):
        return
    for child in list(element):
        if not isinstance(child.tag, str):
            continue
        qname = etree.QName(child)
        if qname.namespace == info.namespace and qname.localname in info.keys:
            continue
        if level >= depth:
            element.remove(child)
        else:
            limit_depth(schema, child, schema.child(info.schema_path, qname.namespace or "", qname.localname),
                        depth, level + 1)


def select_fields(schema: Schema, element: etree._Element, info, selection: dict) -> bool:
    """Keep, in place, only the children of `element` that `selection` names (and list keys);
    returns whether anything was selected."""
    selected = False
    for child in list(element):
        if not isinstance(child.tag, str):
            continue
        is_key = info is not None and etree.QName(child).localname in info.keys and \
            etree.QName(child).namespace == info.namespace
        if child.tag not in selection:
            if not is_key:
                element.remove(child)
            continue
        below = selection[child.tag]
        if below is not None:
            qname = etree.QName(child)
            child_info = schema.child(info.schema_path if info else None, qname.namespace or "", qname.localname)
            if not select_fields(schema, child, child_info, below):
                element.remove(child)
                continue
        selected = True
    return selected


# --- replies -----------------------------------------------------------------------------------


def _for_libyang(tree: etree._Element) -> etree._Element:
    """RFC 6243's default attribute (as the server tags report-all-tagged) back as the
    ietf-netconf-with-defaults metadata libyang reads."""
    attr = f"{{{WD_ATTR_NS}}}default"
    tagged = [e for e in tree.iter() if attr in e.attrib]
    if not tagged:
        return tree
    tree = copy.deepcopy(tree)
    for element in tree.iter():
        value = element.attrib.pop(attr, None)
        if value is not None:
            element.set(f"{{{WD_NS}}}default", value)
    return tree


def encode_json(schema: Schema, tree: etree._Element, steps: tuple[Step, ...], *, config_only: bool,
                tagged: bool = False) -> bytes:
    """The node `steps` address in `tree` (the whole tree, as ietf-restconf:data, for no
    steps), as RFC 7951 JSON."""
    flags = lib.LYD_PRINT_WD_ALL_TAG if tagged else 0
    dnode = schema.parse(_for_libyang(tree) if tagged else tree, config_only=config_only, validate=False)
    with _LyTree(dnode.cdata if dnode is not None else ffi.NULL) as owned:
        if not steps:
            text = _print(owned.top, lib.LYD_JSON, lib.LYD_PRINT_WITHSIBLINGS | flags) if owned.top else b""
            return b'{"ietf-restconf:data":' + (text or b"{}") + b"}"
        found = ffi.new("struct lyd_node **")
        if not owned.top or lib.lyd_find_path(owned.top, data_path(steps).encode(), 0, found) != lib.LY_SUCCESS:
            schema.last_error()  # clears libyang's error list
            raise RPCError("operation-failed", "the resource cannot be encoded")
        text = _print(found[0], lib.LYD_JSON, flags)
    if text in (b"", b"{}"):  # libyang prints no empty non-presence container (depth=1, fields)
        info = steps[-1].info
        return json.dumps({f"{info.module}:{info.name}": {}}).encode()
    return text


def encode_xml(tree: etree._Element, node: etree._Element | None) -> bytes:
    """`node` of `tree` (the whole tree, as ietf-restconf:data, for None) as XML."""
    if node is not None:
        return etree.tostring(node)
    data = etree.Element(f"{{{RESTCONF_NS}}}data", nsmap={None: RESTCONF_NS})
    data.extend(copy_in_scope(child) for child in tree if isinstance(child.tag, str))
    return etree.tostring(data)


def bare_top_member(body: bytes) -> bytes:
    """A JSON reply's top-level member without its module prefix ({"qkd_links": ...}): what
    clients that depart from RFC 7951 read (see RestconfServer's `lenient`)."""
    return re.sub(rb'^\{"[A-Za-z_][A-Za-z0-9_.-]*:', b'{"', body, count=1)


def _parse_op(schema: Schema, document: bytes, fmt: str, kind: int, tree: _LyTree):
    """An RPC or action request, a reply or a notification (`kind`: LYD_TYPE_*_YANG) parsed
    as the tree `tree`; returns its operation node."""
    data_in = ffi.new("struct ly_in **")
    if lib.ly_in_new_memory(document, data_in) != lib.LY_SUCCESS:
        raise malformed("cannot read the body")
    out_tree = ffi.new("struct lyd_node **")
    out_op = ffi.new("struct lyd_node **")
    try:
        ret = lib.lyd_parse_op(schema.ctx.cdata, ffi.NULL, data_in[0], FORMATS[fmt], kind, out_tree, out_op)
    finally:
        lib.ly_in_free(data_in[0], 0)
    tree.top = out_tree[0]
    if ret != lib.LY_SUCCESS:
        raise schema.last_error()
    return out_op[0]


def encode_notification(schema: Schema, content: etree._Element, event_time: str) -> bytes:
    """A notification (its top element) as RFC 8040 section 6.4 writes it in JSON:
    {"ietf-restconf:notification": {"eventTime": ..., "module:name": {...}}}."""
    with _LyTree() as tree:
        text = _print(_parse_op(schema, etree.tostring(content), XML, lib.LYD_TYPE_NOTIF_YANG, tree), lib.LYD_JSON)
    return b'{"ietf-restconf:notification":{"eventTime":' + json.dumps(event_time).encode() + b"," + text[1:] + b"}"


# --- operations ----------------------------------------------------------------------------------


def operation_input(schema: Schema, steps: tuple[Step, ...], info, content: bytes | None, fmt: str,
                    lenient: bool) -> etree._Element:
    """The request of an RPC (no `steps`) or an action (its data path in `steps`) as the
    engine takes it: the RPC element, or a YANG <action> element holding the path. The body
    is the operation's input, {"module:input": {...}} or <input xmlns="module ns">."""
    op = steps[-1].info if steps else info
    parents = steps[:-1]
    document = _wrap(schema, parents, _input_of(schema, op, content, fmt, lenient), fmt)
    with _LyTree() as tree:
        _parse_op(schema, document, fmt, lib.LYD_TYPE_RPC_YANG, tree)
        request = _to_lxml(tree.top, f"{{{BASE_NS}}}rpc")
    if not parents:
        return request[0]
    action = etree.Element(YANG_ACTION, nsmap={None: etree.QName(YANG_ACTION).namespace})
    action.extend(list(request))
    return action


def _input_of(schema: Schema, op, content: bytes | None, fmt: str, lenient: bool) -> bytes:
    """The operation node with the body's input children, in `fmt`."""
    if fmt == JSON:
        members = json_members(content) if content and content.strip() else {}
        if len(members) > 1:
            raise malformed("the body holds one member, the operation's input")
        inner: object = {}
        for name, value in members.items():
            if name != f"{op.module}:input" and not (lenient and name == "input"):
                raise malformed(f"the body's member must be '{op.module}:input', not '{name}'")
            inner = value
        return json.dumps({f"{op.module}:{op.name}": inner}).encode()
    element = etree.Element(op.qname, nsmap={None: op.namespace})
    if content and content.strip():
        root = xml_root(content)
        if root.tag != f"{{{op.namespace}}}input":
            raise malformed(f"the body must be <input xmlns=\"{op.namespace}\">, not <{etree.QName(root).localname}>")
        element.extend(copy_in_scope(c) for c in root if isinstance(c.tag, str))
    return etree.tostring(element)


def operation_output(schema: Schema, steps: tuple[Step, ...], info, output: list[etree._Element],
                     fmt: str) -> bytes:
    """The output elements an RPC or action handler returned, as {"module:output": {...}} or
    <output xmlns="module ns">."""
    op = steps[-1].info if steps else info
    if fmt == XML:
        element = etree.Element(f"{{{op.namespace}}}output", nsmap={None: op.namespace})
        element.extend(copy_in_scope(c) for c in output)
        return etree.tostring(element)
    reply = etree.Element(op.qname, nsmap={None: op.namespace})
    reply.extend(copy_in_scope(c) for c in output)
    with _LyTree() as tree:
        document = _wrap(schema, steps[:-1], etree.tostring(reply), XML)
        text = _print(_parse_op(schema, document, XML, lib.LYD_TYPE_REPLY_YANG, tree), lib.LYD_JSON)
    prefix = f'{{"{op.module}:{op.name}":'.encode()
    if not text.startswith(prefix):
        raise RPCError("operation-failed", "cannot encode the operation's output")
    return f'{{"{op.module}:output":'.encode() + text[len(prefix):]


# --- YANG Patch (RFC 8072) -----------------------------------------------------------------------


EDIT_OPERATIONS = ("create", "delete", "insert", "merge", "move", "replace", "remove")


@dataclass
class PatchEdit:
    edit_id: str
    operation: str
    target: str
    point: str | None = None
    where: str | None = None
    value: bytes | None = None  # the value's data nodes, in the patch's encoding


@dataclass
class Patch:
    patch_id: str
    edits: list[PatchEdit]


def parse_patch(content: bytes, fmt: str) -> Patch:
    if fmt == JSON:
        members = json_members(content)
        patch = members.get("ietf-yang-patch:yang-patch")
        if set(members) != {"ietf-yang-patch:yang-patch"} or not isinstance(patch, dict):
            raise malformed("a YANG Patch body is {\"ietf-yang-patch:yang-patch\": {...}}")
        edits = []
        for edit in patch.get("edit", []) if isinstance(patch.get("edit", []), list) else [None]:
            if not isinstance(edit, dict):
                raise malformed("every edit of a YANG Patch is an object")
            value = edit.get("value")
            if value is not None and not isinstance(value, dict):
                raise malformed(f"edit '{edit.get('edit-id')}': value must be an object")
            edits.append(PatchEdit(_text(edit.get("edit-id"), "edit-id"), _text(edit.get("operation"), "operation"),
                                   _text(edit.get("target"), "target"), _opt_text(edit.get("point")),
                                   _opt_text(edit.get("where")),
                                   json.dumps(value).encode() if value is not None else None))
        return _checked(Patch(_text(patch.get("patch-id"), "patch-id"), edits))
    root = xml_root(content)
    y = lambda tag: f"{{{YANG_PATCH_NS}}}{tag}"
    if root.tag != y("yang-patch"):
        raise malformed(f"a YANG Patch body is <yang-patch xmlns=\"{YANG_PATCH_NS}\">")
    edits = []
    for edit in root.iterfind(y("edit")):
        value = edit.find(y("value"))
        nodes = [c for c in value if isinstance(c.tag, str)] if value is not None else []
        if len(nodes) > 1:
            raise malformed(f"edit '{edit.findtext(y('edit-id'))}': value holds one data node")
        edits.append(PatchEdit(_text(edit.findtext(y("edit-id")), "edit-id"),
                               _text(edit.findtext(y("operation")), "operation"),
                               _text(edit.findtext(y("target")), "target"), _opt_text(edit.findtext(y("point"))),
                               _opt_text(edit.findtext(y("where"))),
                               etree.tostring(copy_in_scope(nodes[0])) if nodes else None))
    return _checked(Patch(_text(root.findtext(y("patch-id")), "patch-id"), edits))


def _text(value, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise malformed(f"a YANG Patch needs '{name}' (a string)")
    return value.strip()


def _opt_text(value) -> str | None:
    return value.strip() if isinstance(value, str) else None


def _checked(patch: Patch) -> Patch:
    if not patch.edits:
        raise malformed("a YANG Patch holds at least one edit")
    seen = set()
    for edit in patch.edits:
        if edit.edit_id in seen:
            raise malformed(f"edit-id '{edit.edit_id}' is used twice")
        seen.add(edit.edit_id)
        if edit.operation not in EDIT_OPERATIONS:
            raise malformed(f"edit '{edit.edit_id}': operation '{edit.operation}' is not one of "
                            f"{', '.join(EDIT_OPERATIONS)}")
        if edit.operation in ("create", "insert", "merge", "replace") and edit.value is None:
            raise malformed(f"edit '{edit.edit_id}': a {edit.operation} needs a value")
        if edit.operation in ("insert", "move"):
            if edit.where not in ("before", "after", "first", "last"):
                raise malformed(f"edit '{edit.edit_id}': a {edit.operation} needs where (before, after, first, last)")
            if edit.where in ("before", "after") and not edit.point:
                raise malformed(f"edit '{edit.edit_id}': where={edit.where} needs a point")
    return patch


def edit_segments(value: str, what: str = "target") -> list[str]:
    """An edit's target or point (a data resource identifier relative to the request's
    target) as path segments; "/" is the request's target itself."""
    if not value.startswith("/"):
        raise malformed(f"edit {what} '{value}' must start with '/'")
    return [segment for segment in value.split("/")[1:] if segment]


def patch_status(schema: Schema, patch_id: str, fmt: str, *, global_errors: list[RPCError] | None = None,
                 edit_errors: tuple[str, list[RPCError]] | None = None) -> bytes:
    """yang-patch-status (RFC 8072 section 2.3): ok, or the errors of the patch or of one edit."""
    if fmt == JSON:
        status: dict = {"patch-id": patch_id}
        if global_errors:
            status["errors"] = {"error": [_json_error(schema, e) for e in global_errors]}
        elif edit_errors is not None:
            edit_id, errors = edit_errors
            status["edit-status"] = {"edit": [{"edit-id": edit_id,
                                               "errors": {"error": [_json_error(schema, e) for e in errors]}}]}
        else:
            status["ok"] = [None]
        return json.dumps({"ietf-yang-patch:yang-patch-status": status}).encode()
    y = lambda tag: f"{{{YANG_PATCH_NS}}}{tag}"
    root = etree.Element(y("yang-patch-status"), nsmap={None: YANG_PATCH_NS})
    etree.SubElement(root, y("patch-id")).text = patch_id
    if global_errors:
        root.append(_xml_errors(schema, global_errors, y("errors")))
    elif edit_errors is not None:
        edit = etree.SubElement(etree.SubElement(root, y("edit-status")), y("edit"))
        etree.SubElement(edit, y("edit-id")).text = edit_errors[0]
        edit.append(_xml_errors(schema, edit_errors[1], y("errors")))
    else:
        etree.SubElement(root, y("ok"))
    return etree.tostring(root)


# --- errors (RFC 8040 section 7.1) ---------------------------------------------------------------


def error_body(schema: Schema, errors: list[RPCError], fmt: str) -> bytes:
    if fmt == JSON:
        return json.dumps({"ietf-restconf:errors": {"error": [_json_error(schema, e) for e in errors]}}).encode()
    return etree.tostring(_xml_errors(schema, errors, f"{{{RESTCONF_NS}}}errors"))


def _error_path(schema: Schema, err: RPCError) -> str | None:
    """The error's path when it names a data node of the schema (an instance-identifier);
    libyang reports some errors at a schema path, which is not one."""
    path = err.path
    if not path or path == "/" or not path.startswith("/"):
        return None
    parent, module = None, None
    for step in re.sub(r"\[[^\]]*\]", "", path).split("/")[1:]:
        prefix, _, name = step.rpartition(":")
        module = prefix or module
        namespace = schema.namespace_of_module(module or "")
        parent = schema.child(parent.schema_path if parent else None, namespace or "", name) if namespace else None
        if parent is None or parent.keyword not in DATA_KEYWORDS:
            return None
    return path


def _message(schema: Schema, err: RPCError) -> str:
    if err.path and err.path != "/" and _error_path(schema, err) is None and err.path not in err.message:
        return f"{err.message} (at {err.path})"
    return err.message


def _json_error(schema: Schema, err: RPCError) -> dict:
    out: dict = {"error-type": err.type, "error-tag": err.tag}
    if err.app_tag:
        out["error-app-tag"] = err.app_tag
    path = _error_path(schema, err)
    if path:
        out["error-path"] = _json_path(schema, path)
    if err.message:
        out["error-message"] = _message(schema, err)
    if err.info:
        out["error-info"] = dict(err.info)
    return out


def _json_path(schema: Schema, path: str) -> str:
    """An instance-identifier as RFC 7951 section 6.11 writes it: a step names its module only
    where the module changes (qualified_path's form, prefix on every step, becomes this)."""
    out, module = [], None
    for step in _steps(path):
        bracket = step.find("[")
        name, predicates = (step, "") if bracket < 0 else (step[:bracket], step[bracket:])
        prefix, _, local = name.rpartition(":")
        prefix = prefix or module
        if prefix:
            predicates = re.sub(rf"\[\s*{re.escape(prefix)}:", "[", predicates)
        out.append((local if prefix == module else f"{prefix}:{local}") + predicates)
        module = prefix
    return "/" + "/".join(out)


def _xml_errors(schema: Schema, errors: list[RPCError], tag: str) -> etree._Element:
    ns = etree.QName(tag).namespace
    r = lambda name: f"{{{ns}}}{name}"
    root = etree.Element(tag, nsmap={None: ns})
    for err in errors:
        entry = etree.SubElement(root, r("error"))
        etree.SubElement(entry, r("error-type")).text = err.type
        etree.SubElement(entry, r("error-tag")).text = err.tag
        if err.app_tag:
            etree.SubElement(entry, r("error-app-tag")).text = err.app_tag
        path = _error_path(schema, err)
        if path:
            text, nsmap = qualified_path(path, schema, err.path_nsmap)
            etree.SubElement(entry, r("error-path"), nsmap=nsmap or None).text = text
        if err.message:
            etree.SubElement(entry, r("error-message")).text = _message(schema, err)
        if err.info:
            info = etree.SubElement(entry, r("error-info"))
            for name, value in err.info.items():
                etree.SubElement(info, r(name)).text = str(value)
    return root
