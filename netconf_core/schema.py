"""The server's schema: a libyang context plus the look-ups the engine needs.

Data trees travel through the engine as lxml elements; libyang is the judge of
validity. `Schema.parse` turns an lxml tree into a validated libyang tree and maps
libyang's errors to rpc-errors (RFC 6241 Appendix A, RFC 7950 section 15).
"""
from __future__ import annotations

import atexit
import collections
import functools
import hashlib
import pathlib
import re
import threading
import weakref
from dataclasses import dataclass

import libyang
from _libyang import ffi, lib
from lxml import etree

from .errors import RPCError
from .models import load_context
from .ns import BASE

# The NETCONF protocol's own modules, loaded into every server's context.
PROTOCOL_MODULES = (
    "ietf-netconf",
    "ietf-netconf-with-defaults",
    "ietf-netconf-monitoring",
    "ietf-netconf-notifications",
    "ietf-netconf-acm",
    "ietf-yang-library",
    "notifications",  # RFC 5277's modules: clients (yangcli, netopeer2-cli) look for them
    "nc-notifications",
    "ietf-subscribed-notifications",  # RFC 8639/8641 subscriptions (netconf_core/push.py)
    "ietf-yang-push",
    "ietf-restconf-monitoring",  # RESTCONF's capabilities and streams (netconf_core/restconf.py)
)

_LOCATION = re.compile(r'(Data|Schema) location "([^"]+)"')


@dataclass(frozen=True)
class NodeInfo:
    """What the engine needs to know of one schema node."""

    name: str
    namespace: str
    module: str
    keyword: str  # container, leaf, leaf-list, list, anydata, anyxml, rpc, action, notification
    config: bool
    keys: tuple[str, ...]
    ordered_by_user: bool
    schema_path: str
    # The choices the node sits in below its data parent, outermost first: (the choice, named
    # by its choice and case ancestors' names, and the node's case in it). Creating the node
    # deletes the nodes of the other cases (RFC 7950 section 7.9).
    cases: tuple[tuple[str, str], ...] = ()

    @property
    def qname(self) -> str:
        return f"{{{self.namespace}}}{self.name}"


class Schema:
    def __init__(self, modules: list[str], search_dirs: list[pathlib.Path | str] | None = None):
        self.ctx = load_context(PROTOCOL_MODULES + tuple(modules), search_dirs or ())
        self.modules = list(modules)
        self._subtrees = _ParsedSubtrees(self.ctx)
        self._ns_to_module = {}
        for module in self.ctx:
            if module.implemented():
                self._ns_to_module[ffi.string(module.cdata.ns).decode()] = module.name()

    def module_of_namespace(self, namespace: str) -> str | None:
        return self._ns_to_module.get(namespace)

    def namespace_of_module(self, module: str) -> str | None:
        for ns, name in self._ns_to_module.items():
            if name == module:
                return ns
        return None

    def implemented_modules(self) -> list[libyang.Module]:
        return [m for m in self.ctx if m.implemented()]

    @functools.cached_property
    def module_list(self) -> list[tuple[str, str, str]]:
        """(name, revision or "", namespace) of every implemented module."""
        out = []
        for module in self.implemented_modules():
            revision = next(iter(module.revisions()), None)
            out.append((module.name(), revision.date() if revision else "", ffi.string(module.cdata.ns).decode()))
        return out

    @functools.cached_property
    def yang_library_xml(self) -> str:
        """ietf-yang-library data (RFC 8525) as libyang builds it; the content-id is a digest of it."""
        dnode = self.ctx.get_yanglib_data()
        try:
            return print_xml(dnode)
        finally:
            free_tree(dnode)

    @functools.cached_property
    def content_id(self) -> str:
        return hashlib.sha256(self.yang_library_xml.encode()).hexdigest()[:16]

    # --- schema look-ups -------------------------------------------------

    @functools.lru_cache(maxsize=None)
    def child(self, parent_path: str | None, namespace: str, name: str) -> NodeInfo | None:
        """The schema node `name` (in `namespace`) under the node at `parent_path`
        (None for the top level), seen through choices and cases."""
        if parent_path is None:
            module_name = self._ns_to_module.get(namespace)
            if module_name is None:
                return None
            candidates = self.ctx.get_module(module_name).children()
        else:
            parent = self._snode(parent_path)
            candidates = parent.children() if parent is not None else []
        for snode in candidates:
            if snode.name() == name and ffi.string(snode.module().cdata.ns).decode() == namespace:
                return self._info(snode)
        return None

    def _snode(self, schema_path: str) -> libyang.SNode | None:
        try:
            return next(self.ctx.find_path(schema_path), None)
        except libyang.LibyangError:
            return None

    @staticmethod
    def _info(snode: libyang.SNode) -> NodeInfo:
        keys: tuple[str, ...] = ()
        ordered = False
        if isinstance(snode, libyang.SList):
            keys = tuple(k.name() for k in snode.keys())
            ordered = snode.ordered()
        elif isinstance(snode, libyang.SLeafList):
            ordered = snode.ordered()
        return NodeInfo(
            name=snode.name(),
            namespace=ffi.string(snode.module().cdata.ns).decode(),
            module=snode.module().name(),
            keyword=snode.keyword(),
            config=not snode.config_false(),
            keys=keys,
            ordered_by_user=ordered,
            schema_path=snode.schema_path(),
            cases=_cases(snode),
        )

    def node_for(self, element: etree._Element) -> NodeInfo | None:
        """Schema node of a data element, found through its ancestors up to the datastore root."""
        chain = []
        node = element
        while node is not None and not _is_root(node):
            chain.append(node)
            node = node.getparent()
        return self.node_for_path(list(reversed(chain)))

    def node_for_path(self, elements: list[etree._Element]) -> NodeInfo | None:
        """Schema node of the last of `elements`, each a data element inside the one before."""
        info = None
        for el in elements:
            q = etree.QName(el)
            info = self.child(info.schema_path if info else None, q.namespace or "", q.localname)
            if info is None:
                return None
        return info

    # --- validation ------------------------------------------------------

    def parse(self, root: etree._Element, *, config_only: bool, validate: bool = True) -> libyang.DNode | None:
        """Parse the children of `root`, as one document, into a libyang tree. Raises RPCError
        naming the offending node. The caller frees the returned tree (`free_tree`)."""
        return self.parse_xml(b"".join(etree.tostring(child) for child in root), config_only=config_only,
                              validate=validate)

    def parse_xml(self, xml: bytes, *, config_only: bool, validate: bool = True) -> libyang.DNode | None:
        """`parse` of top-level data nodes already serialised: libyang only, so that it may run
        in a worker thread (libyang's calls release the GIL)."""
        return self._parse_whole(xml, config_only, validate)

    def _parse_whole(self, xml: bytes, config_only: bool, validate: bool) -> libyang.DNode | None:
        if not xml:
            return None
        parse_flags, validate_flags = _flags(config_only)
        tree = self._subtrees.parse(xml, parse_flags | (0 if validate else lib.LYD_PARSE_ONLY), validate_flags)
        return libyang.DNode.new(self.ctx, tree) if tree else None

    def _parse_pieces(self, root: etree._Element, pieces: list[bytes], *, config_only: bool,
                      validate: bool) -> tuple[libyang.DNode | None, list[_Parsed | None] | None]:
        """For `canonical`, which sees a datastore after each edit: `pieces` are the top-level
        children of `root` as XML. Each is parsed on its own, or copied from a tree parsed
        earlier (`_ParsedSubtrees`); the pieces are then joined and the whole tree validated.
        Where joining could hide an error (two top-level nodes of the same name: a duplicate
        instance would be merged into one), or a child is not an element, the document is
        parsed whole instead. Also returns the cache entry of each piece (None when the
        document was parsed whole)."""
        if not pieces:
            return None, None
        tags = [child.tag for child in root]
        if len(set(tags)) != len(tags) or not all(isinstance(tag, str) for tag in tags):
            return self._parse_whole(b"".join(pieces), config_only, validate), None
        parse_flags, validate_flags = _flags(config_only)
        parse_flags |= lib.LYD_PARSE_ONLY  # each piece alone; the whole is validated below
        tree = ffi.new("struct lyd_node **")
        entries = []
        try:
            for xml in pieces:
                node, entry = self._subtrees.copy(xml, parse_flags)
                entries.append(entry)
                if not node:
                    continue
                if not tree[0]:
                    tree[0] = node
                elif lib.lyd_merge_siblings(tree, node, lib.LYD_MERGE_DESTRUCT) != lib.LY_SUCCESS:
                    lib.lyd_free_all(node)
                    raise self.last_error()
            if validate and lib.lyd_validate_all(tree, self.ctx.cdata, validate_flags, ffi.NULL) != lib.LY_SUCCESS:
                raise self.last_error()
        except BaseException:
            if tree[0]:
                lib.lyd_free_all(tree[0])
            raise
        return (libyang.DNode.new(self.ctx, tree[0]) if tree[0] else None), entries

    def validate_operation(self, rpc: bytes, data: etree._Element | None = None) -> None:
        """Validate an <rpc> holding a YANG RPC or action: input types, ranges, mandatory nodes.
        `data` (a datastore tree) is what `when`, `must` and leafrefs of the operation and of
        an action's ancestors are evaluated against."""
        dep = self.parse(data, config_only=False, validate=False) if data is not None else None
        in_ = ffi.new("struct ly_in **")
        if lib.ly_in_new_memory(rpc, in_) != lib.LY_SUCCESS:
            raise RPCError("operation-failed", "cannot read the operation")
        envelope = ffi.new("struct lyd_node **")
        op = ffi.new("struct lyd_node **")
        try:
            ret = lib.lyd_parse_op(self.ctx.cdata, ffi.NULL, in_[0], lib.LYD_XML, lib.LYD_TYPE_RPC_NETCONF, envelope, op)
            if ret == lib.LY_SUCCESS:
                ret = lib.lyd_validate_op(op[0], dep.cdata if dep is not None else ffi.NULL,
                                          lib.LYD_TYPE_RPC_YANG, ffi.NULL)
            if ret != lib.LY_SUCCESS:
                raise self.last_error()
        finally:
            lib.ly_in_free(in_[0], 0)
            if op[0]:
                top = op[0]
                while top.parent:
                    top = ffi.cast("struct lyd_node *", top.parent)
                lib.lyd_free_all(top)
            if envelope[0]:
                lib.lyd_free_all(envelope[0])
            free_tree(dep)

    def last_error(self) -> RPCError:
        return _last_error(self.ctx)

    def canonical(self, root: etree._Element, *, config_only: bool, validate: bool = True) -> etree._Element:
        """Validate `root` and return it as libyang prints it (canonical values and order):
        `root` itself when it prints the same, which saves re-reading it (trees are never
        changed in place, so sharing it is safe)."""
        pieces = [etree.tostring(child) for child in root]
        dnode, entries = self._parse_pieces(root, pieces, config_only=config_only, validate=validate)
        if dnode is None:
            return _tree(root.tag, "")
        try:
            if entries is not None and _prints_as_pieces(dnode, root, pieces, entries):
                return root
            text = print_xml(dnode)
        finally:
            free_tree(dnode)
        return root if text.encode() == b"".join(pieces) else _tree(root.tag, text)

    def to_lxml(self, dnode: libyang.DNode | None, root_tag: str, flags: int = 0) -> etree._Element:
        if dnode is None:
            return _tree(root_tag, "")
        try:
            text = print_xml(dnode, flags)
        finally:
            free_tree(dnode)
        return _tree(root_tag, text)


def _cases(snode: libyang.SNode) -> tuple[tuple[str, str], ...]:
    """NodeInfo.cases of a schema node: its choice and case ancestors up to its data parent."""
    chain, node = [], snode.cdata.parent
    while node and node.nodetype in (lib.LYS_CHOICE, lib.LYS_CASE):
        chain.append((node.nodetype, ffi.string(node.name).decode()))
        node = node.parent
    chain.reverse()
    out, names = [], []
    for (kind, name), following in zip(chain, chain[1:] + [(None, None)]):
        names.append(name)
        if kind == lib.LYS_CHOICE and following[0] == lib.LYS_CASE:
            out.append(("/".join(names), following[1]))
    return tuple(out)


_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, remove_blank_text=True)


def _tree(root_tag: str, children_xml: str) -> etree._Element:
    """A new root element holding the top-level data nodes that libyang printed."""
    out = etree.Element(root_tag, nsmap={None: etree.QName(root_tag).namespace})
    if children_xml:
        printed = etree.fromstring(f"<w>{children_xml}</w>", _PARSER)
        for element, value in own_prefixed_values(printed):
            element.text = value
        out.extend(list(printed))
    return out


def own_prefixed_values(root: etree._Element) -> list[tuple[etree._Element, str]]:
    """The leaves under `root` (itself included) whose value is `prefix:name` with the prefix
    declared on the leaf itself for the leaf's own namespace, which is also the default there
    (libyang prints an identityref of the module's own identities so, and clients write it
    so), each with its value as `name`: the same value by the default namespace. lxml drops
    such a declaration as redundant whenever the leaf, or a subtree holding it, moves into a
    tree declaring that namespace, which would leave the prefixed value unbound."""
    found = []
    for element in root.iter():
        if not isinstance(element.tag, str) or len(element) or not element.text:
            continue
        prefix, colon, name = element.text.strip().partition(":")
        own = etree.QName(element).namespace
        if not colon or not prefix or element.nsmap.get(prefix) != own or element.nsmap.get(None) != own:
            continue
        parent = element.getparent()
        if parent is None or parent.nsmap.get(prefix) != own:   # declared on the leaf itself
            found.append((element, name))
    return found


# lyd_print flags for with-defaults (RFC 6243): explicit is libyang's default.
WD_FLAGS = {
    "explicit": 0,
    "report-all": lib.LYD_PRINT_WD_ALL,
    "report-all-tagged": lib.LYD_PRINT_WD_ALL_TAG,
    "trim": lib.LYD_PRINT_WD_TRIM,
}


def print_xml(dnode: libyang.DNode, flags: int = 0) -> str:
    buf = ffi.new("char **")
    ret = lib.lyd_print_mem(buf, dnode.cdata, lib.LYD_XML, lib.LYD_PRINT_WITHSIBLINGS | lib.LYD_PRINT_SHRINK | flags)
    if ret != lib.LY_SUCCESS:
        raise RPCError("operation-failed", "cannot print data tree")
    try:
        return ffi.string(buf[0]).decode() if buf[0] else ""
    finally:
        lib.free(buf[0])


def _flags(config_only: bool) -> tuple[int, int]:
    """libyang's parse and validation flags for a datastore (`config_only`) or operational tree."""
    if config_only:
        return lib.LYD_PARSE_STRICT | lib.LYD_PARSE_NO_STATE, lib.LYD_VALIDATE_NO_STATE
    return lib.LYD_PARSE_STRICT, 0


def _last_error(ctx: libyang.Context) -> RPCError:
    """The first error libyang stored, as an rpc-error; clears libyang's error list."""
    err = lib.ly_err_first(ctx.cdata)
    if not err:
        return RPCError("operation-failed", "validation failed")
    item = _ErrorItem(err.vecode, ffi.string(err.msg).decode() if err.msg else "validation failed",
                      ffi.string(err.path).decode() if err.path else "",
                      ffi.string(err.apptag).decode() if err.apptag else None)
    lib.ly_err_clean(ctx.cdata, ffi.NULL)
    return _error_for(ctx, item)


@dataclass(frozen=True)
class _ErrorItem:
    """What libyang says of an error (its struct ly_err_item)."""

    vecode: int  # LYVE_*: what kind of validation error
    message: str
    location: str  # 'Data location "<path>", line number N.' or 'Schema location "<path>".' or ''
    app_tag: str | None

    @property
    def kind(self) -> str | None:
        """"Data" (a data node's path), "Schema" (a schema node's: no instance), or None."""
        match = _LOCATION.search(self.location)
        return match.group(1) if match else None

    @property
    def path(self) -> str | None:
        match = _LOCATION.search(self.location)
        return match.group(2) if match else None

    @property
    def while_parsing(self) -> bool:
        """Found while reading the XML (the location names its line), not when validating the whole."""
        return "line number" in self.location


@dataclass
class _Parsed:
    tree: object  # struct lyd_node *: parse-only, owned by the cache
    canonical: bool = False  # seen to print as its XML once validated in a datastore


class _ParsedSubtrees:
    """Parse-only libyang trees of the top-level data nodes parsed lately, by their XML.

    An edit changes one or a few top-level nodes of a datastore and leaves the others as
    they were; those are copied from here (lyd_dup, in C) instead of being parsed again,
    which is most of the cost of validating a datastore after a small edit. Bounded in
    entries and bytes; the least recently used go first. Holds the context, so that its
    trees are freed before the context is (by `close`, or at exit; never from the garbage
    collector, which has been seen to abort the process there: a collected schema's cache
    leaks its few MiB instead). Locked: libyang runs without the GIL, and a
    schema may serve servers in several threads (tests do), so a tree must not be freed
    while another thread copies it."""

    MAX_ENTRIES = 128
    MAX_BYTES = 2 * 1024 * 1024  # of XML; a libyang tree takes a few times that

    def __init__(self, ctx: libyang.Context):
        self._ctx = ctx
        self._trees: collections.OrderedDict[tuple[int, bytes], _Parsed] = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._closed = False
        _LIVE_CACHES.add(self)

    def parse(self, xml: bytes, parse_flags: int, validate_flags: int = 0):
        """A new tree of `xml` (the caller frees it), or NULL for no data; RPCError if invalid."""
        out = ffi.new("struct lyd_node **")
        if lib.lyd_parse_data_mem(self._ctx.cdata, xml, lib.LYD_XML, parse_flags, validate_flags, out) != lib.LY_SUCCESS:
            if out[0]:
                lib.lyd_free_all(out[0])
            raise _last_error(self._ctx)
        return out[0]

    def copy(self, xml: bytes, parse_flags: int) -> tuple[object, _Parsed | None]:
        """A new parse-only tree of `xml`, one top-level node (the caller frees it), and its
        cache entry (None if not cached)."""
        key = (parse_flags, xml)
        with self._lock:
            entry = self._trees.get(key)
            if entry is None:
                tree = self.parse(xml, parse_flags)
                if not tree or len(xml) > self.MAX_BYTES or self._closed:
                    return tree, None
                entry = self._trees[key] = _Parsed(tree)
                self._bytes += len(xml)
                while len(self._trees) > self.MAX_ENTRIES or self._bytes > self.MAX_BYTES:
                    (_, old_xml), old = self._trees.popitem(last=False)
                    self._bytes -= len(old_xml)
                    lib.lyd_free_all(old.tree)
            else:
                self._trees.move_to_end(key)
            dup = ffi.new("struct lyd_node **")
            if lib.lyd_dup_single(entry.tree, ffi.NULL, lib.LYD_DUP_RECURSIVE, dup) != lib.LY_SUCCESS:
                raise RPCError("operation-failed", "cannot copy a data tree")
        return dup[0], entry

    def close(self) -> None:
        """Free the cached trees and cache no more."""
        with self._lock:
            self._closed = True
            for entry in self._trees.values():
                lib.lyd_free_all(entry.tree)
            self._trees.clear()
            self._bytes = 0



_LIVE_CACHES: weakref.WeakSet[_ParsedSubtrees] = weakref.WeakSet()


@atexit.register
def _close_caches() -> None:
    """Free every cache's trees at exit, while every libyang context is still alive."""
    for cache in list(_LIVE_CACHES):
        cache.close()


def _prints_as_pieces(dnode: libyang.DNode, root: etree._Element, pieces: list[bytes],
                      entries: list[_Parsed | None]) -> bool:
    """Whether libyang prints the validated `dnode` as the pieces, in their order. Only the
    top-level nodes not yet seen to print as they are get printed: an edit changes a few
    top-level nodes, and printing the others again is wasted work."""
    nodes = []
    node = dnode.cdata
    while node:
        if not node.flags & lib.LYD_DEFAULT:  # added by validation: not printed (explicit mode)
            nodes.append(node)
        node = node.next
    if len(nodes) != len(pieces):
        return False
    for node, child, xml, entry in zip(nodes, root, pieces, entries):
        name = etree.QName(child)
        if (ffi.string(node.schema.name).decode() != name.localname
                or ffi.string(node.schema.module.ns).decode() != name.namespace):
            return False
        if not (entry and entry.canonical) and _print_node(node) != xml:
            return False
    for entry in entries:
        if entry:
            entry.canonical = True
    return True


def _print_node(node) -> bytes:
    """One node and its subtree as libyang prints it, without its siblings."""
    buf = ffi.new("char **")
    if lib.lyd_print_mem(buf, node, lib.LYD_XML, lib.LYD_PRINT_SHRINK) != lib.LY_SUCCESS:
        raise RPCError("operation-failed", "cannot print data tree")
    try:
        return ffi.string(buf[0]) if buf[0] else b""
    finally:
        lib.free(buf[0])


def free_tree(dnode: libyang.DNode | None) -> None:
    if dnode is not None:
        lib.lyd_free_all(dnode.cdata)


def _is_root(element: etree._Element) -> bool:
    return etree.QName(element).namespace == BASE


# RFC 7950 section 15 app-tags and the error-tags they go with.
_APP_TAG_ERRORS = {
    "must-violation": "operation-failed",
    "data-not-unique": "operation-failed",
    "too-many-elements": "operation-failed",
    "too-few-elements": "operation-failed",
    "instance-required": "data-missing",
    "missing-choice": "data-missing",
    "missing-instance": "bad-attribute",
}


def _error_for(ctx: libyang.Context, err: _ErrorItem) -> RPCError:
    """The rpc-error of a libyang error, from its app-tag, its code (vecode) and what its
    location names in the schema (RFC 6241 Appendix A, RFC 7950 section 15)."""
    path, info = err.path, {}
    if err.app_tag in _APP_TAG_ERRORS:
        tag = _APP_TAG_ERRORS[err.app_tag]
    elif err.app_tag:
        tag = "operation-failed"  # a must with its own error-app-tag
    elif err.vecode == lib.LYVE_REFERENCE:  # a node or namespace the schema lacks
        if err.kind == "Data":
            tag = "unknown-element"  # a child that the located node does not have
        elif _unknown_namespace(ctx, err.message):
            tag = "unknown-namespace"
        else:
            tag = "invalid-value"
    elif err.vecode == lib.LYVE_SYNTAX_XML and (_unknown_namespace(ctx, err.message)
                                                or _NAME.fullmatch(next(iter(_QUOTED.findall(err.message)), ""))):
        tag = "unknown-namespace"  # an XML prefix bound to nothing, or to no module
    elif err.vecode == lib.LYVE_DATA and err.kind == "Schema":
        # No instance to point at: a mandatory node missing, or a choice with two cases' data
        # (RFC 7950 section 8.3.1), whose schema path names the choice.
        tag = "bad-element" if _is_choice(ctx, path or "") else "data-missing"
    elif err.vecode == lib.LYVE_DATA and err.kind == "Data" and err.while_parsing and _is_state(ctx, path or ""):
        tag = "unknown-element"  # a config false node where only configuration is read
        info["bad-element"] = _last_step(path or "")
    elif err.vecode == lib.LYVE_DATA and err.kind == "Data" and not err.while_parsing and _DUPLICATE.match(err.message):
        # libyang 2 gives a second instance (of a leaf, or a list entry's keys) no code of its
        # own, nor a location that tells it from other errors: its message does.
        tag = "data-exists"
    elif err.vecode == lib.LYVE_DATA and err.kind == "Data" and not err.while_parsing and _is_mandatory(ctx, path or ""):
        tag = "data-missing"  # a mandatory node of an RPC's input, located by its data path
    else:
        tag = "invalid-value"
    return RPCError(tag, err.message, path=path, app_tag=err.app_tag, info=info)


_DUPLICATE = re.compile(r"Duplicate instance")
_PREDICATES = re.compile(r"""\[(?:[^\]'"]|'[^']*'|"[^"]*")*\]""")
_QUOTED = re.compile(r'"([^"]*)"')
_NAME = re.compile(r"[A-Za-z_][\w.-]*")


def _schema_node(ctx: libyang.Context, path: str):
    """The compiled schema node (struct lysc_node *) a libyang location names, or NULL; a
    choice too, which data paths skip."""
    try:
        return _find_schema_node(ctx, _PREDICATES.sub("", path))
    finally:
        lib.ly_err_clean(ctx.cdata, ffi.NULL)  # what a look-up that found nothing logged


def _find_schema_node(ctx: libyang.Context, schema_path: str):
    node = lib.lys_find_path(ctx.cdata, ffi.NULL, schema_path.encode(), 0) if schema_path else ffi.NULL
    if node or "/" not in schema_path.strip("/"):
        return node
    parent_path, _, name = schema_path.rpartition("/")
    parent = lib.lys_find_path(ctx.cdata, ffi.NULL, parent_path.encode(), 0)
    child = ffi.NULL
    while parent:
        child = lib.lys_getnext(child, parent, ffi.NULL, lib.LYS_GETNEXT_WITHCHOICE)
        if not child or ffi.string(child.name).decode() == name.split(":")[-1]:
            return child
    return ffi.NULL


def _is_choice(ctx: libyang.Context, path: str) -> bool:
    node = _schema_node(ctx, path)
    return bool(node) and node.nodetype == lib.LYS_CHOICE


def _is_mandatory(ctx: libyang.Context, path: str) -> bool:
    node = _schema_node(ctx, path)
    return bool(node) and bool(node.flags & lib.LYS_MAND_TRUE)


def _is_state(ctx: libyang.Context, path: str) -> bool:
    node = _schema_node(ctx, path)
    return bool(node) and bool(node.flags & lib.LYS_CONFIG_R)


def _last_step(path: str) -> str:
    return _PREDICATES.sub("", path).rstrip("/").rsplit("/", 1)[-1].split(":")[-1]


def _unknown_namespace(ctx: libyang.Context, message: str) -> bool:
    """Whether the error names (first, quoted) a namespace that no module of the context has."""
    quoted = _QUOTED.findall(message)
    if not quoted:
        return False
    first = quoted[0]
    if ":" in first:  # node names and prefixes hold no colon; namespaces do
        return not any(ffi.string(m.cdata.ns).decode() == first for m in ctx)
    return False


def qualified_path(path: str | None, schema: Schema,
                   nsmap_given: dict[str, str] | None = None) -> tuple[str | None, dict[str, str]]:
    """A libyang-style data path (module prefix only where the module changes) rewritten with
    a prefix on every step and key, as RFC 6241 section 4.3's error-path example has it, with
    the namespace bindings of those prefixes (the module names). A path already qualified
    comes back the same; one whose prefixes are not module names is left as it was given."""
    if not path:
        return path, nsmap_given or {}
    steps, nsmap, module = [], {}, None
    for step in _steps(path):
        bracket = step.find("[")
        name, predicates = (step, "") if bracket < 0 else (step[:bracket], step[bracket:])
        if ":" in name:
            module, name = name.split(":", 1)
        namespace = schema.namespace_of_module(module or "")
        if namespace is None:
            return path, nsmap_given or {}
        nsmap[module] = namespace
        predicates = _KEY_PREDICATE.sub(lambda m: f"[{module}:{m.group(1)}=", predicates)
        steps.append(f"{module}:{name}{predicates}")
    return "/" + "/".join(steps), nsmap


_KEY_PREDICATE = re.compile(r"\[\s*([A-Za-z_][\w.-]*)\s*=")


def _steps(path: str) -> list[str]:
    """Split a path on '/' outside predicates and quoted values."""
    steps, current, depth, quote = [], "", 0, None
    for ch in path:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == "/" and depth == 0:
            if current:
                steps.append(current)
            current = ""
            continue
        current += ch
    if current:
        steps.append(current)
    return steps
