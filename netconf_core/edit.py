"""edit-config (RFC 6241 section 7.2) applied to an lxml copy of a datastore.

The edit works on a copy; the caller validates the result with libyang and only then
swaps it in, so a failed edit leaves the datastore as it was whatever the error-option.
"""
from __future__ import annotations

import copy
import re

from lxml import etree

from .datastore import copy_in_scope
from .errors import RPCError, RPCErrorList
from .ns import BASE, YANG_XML
from .schema import NodeInfo, Schema

OPERATION_ATTR = BASE("operation")
INSERT_ATTR = YANG_XML("insert")
KEY_ATTR = YANG_XML("key")
VALUE_ATTR = YANG_XML("value")
EDIT_ATTRS = (OPERATION_ATTR, INSERT_ATTR, KEY_ATTR, VALUE_ATTR)
OPERATIONS = ("merge", "replace", "create", "delete", "remove", "none")
_KEY_PREDICATE = re.compile(r"\[\s*(?:[\w.-]+:)?([\w.-]+)\s*=\s*(['\"])(.*?)\2\s*\]")


def apply_edit(schema: Schema, target: etree._Element, config: etree._Element,
               default_operation: str = "merge", collect_all_errors: bool = False) -> etree._Element:
    """Return a new datastore root: `target` with the edit `config` applied.
    With `collect_all_errors` every top-level node is tried and all errors are raised together."""
    result = copy.deepcopy(target)
    editor = _Editor(schema)
    errors: list[RPCError] = []
    for child in config:
        if not isinstance(child.tag, str):
            continue  # comments, processing instructions
        try:
            editor.apply(result, None, "", child, default_operation)
        except RPCError as err:
            if not collect_all_errors:
                raise
            errors.append(err)
    if errors:
        raise errors[0] if len(errors) == 1 else RPCErrorList(errors)
    return result


def clean_copy(element: etree._Element) -> etree._Element:
    """A deep copy (namespaces in scope kept) without edit-config attributes."""
    out = copy_in_scope(element)
    for node in out.iter():
        for attr in EDIT_ATTRS:
            node.attrib.pop(attr, None)
    return out


class _Editor:
    def __init__(self, schema: Schema):
        self.schema = schema
        # The nodes this edit added: held, so that their lxml proxies (compared by identity) live.
        self.added: list[etree._Element] = []

    def error(self, tag: str, message: str, path: str, **info: str) -> RPCError:
        return RPCError(tag, message, type="application" if tag not in ("bad-attribute",) else "protocol",
                        path=path or "/", info={k.replace("_", "-"): v for k, v in info.items()})

    def lookup(self, parent: NodeInfo | None, parent_path: str, edit: etree._Element) -> NodeInfo:
        q = etree.QName(edit)
        namespace = q.namespace or ""
        info = self.schema.child(parent.schema_path if parent else None, namespace, q.localname)
        where = parent_path or "/"
        if info is None:
            if self.schema.module_of_namespace(namespace) is None:
                raise self.error("unknown-namespace", f"namespace '{namespace}' of element '{q.localname}' "
                                 f"is not supported by this server", where,
                                 bad_element=q.localname, bad_namespace=namespace)
            raise self.error("unknown-element", f"'{q.localname}' is not a node of the schema under {where}",
                             where, bad_element=q.localname)
        if not info.config or info.keyword in ("rpc", "action", "notification"):
            raise self.error("unknown-element", f"'{q.localname}' is state data or an operation and cannot "
                             "be configured", where, bad_element=q.localname)
        return info

    def data_path(self, parent: NodeInfo | None, parent_path: str, info: NodeInfo, edit: etree._Element) -> str:
        name = info.name if parent and parent.module == info.module else f"{info.module}:{info.name}"
        path = f"{parent_path}/{name}"
        for key in info.keys:
            value = _child_text(edit, info.namespace, key)
            if value is not None:
                path += f"[{key}={_quote(value)}]"
        if info.keyword == "leaf-list":
            path += f"[.={_quote((edit.text or '').strip())}]"
        return path

    def apply(self, parent_data: etree._Element, parent: NodeInfo | None, parent_path: str,
              edit: etree._Element, inherited: str) -> None:
        info = self.lookup(parent, parent_path, edit)
        path = self.data_path(parent, parent_path, info, edit)
        op = edit.get(OPERATION_ATTR, inherited)
        if op not in OPERATIONS or (op == "none" and OPERATION_ATTR in edit.attrib):
            raise self.error("bad-attribute", f"'{op}' is not an edit operation "
                             "(merge, replace, create, delete, remove)", path,
                             bad_attribute="operation", bad_element=info.name)
        for key in info.keys:
            if _child_text(edit, info.namespace, key) is None:
                raise self.error("missing-element", f"list entry '{info.name}' needs its key '{key}'",
                                 path, bad_element=key)
        existing = _find(parent_data, edit, info)

        if op in ("delete", "remove"):
            if existing is None:
                if op == "delete":
                    raise self.error("data-missing", f"cannot delete {path}: it does not exist", path)
                return
            parent_data.remove(existing)
            return
        if op == "create" and existing is not None:
            raise self.error("data-exists", f"cannot create {path}: it already exists", path)

        if existing is not None and op in ("merge", "none"):
            if info.keyword == "leaf" and op == "merge":
                parent_data.replace(existing, clean_copy(edit))
            elif info.keyword not in ("leaf", "leaf-list", "anydata", "anyxml"):
                self.apply_children(existing, info, path, edit, op)
            if info.ordered_by_user and INSERT_ATTR in edit.attrib:
                parent_data.remove(existing)
                self.insert(parent_data, existing, info, edit, path)
            return

        if op == "none":
            if info.keyword in ("leaf", "leaf-list", "anydata", "anyxml"):
                return
            # An absent container or list entry on the way to an explicit operation below.
            placeholder = self.build(edit, info, path, "none")
            if len(placeholder) > len(info.keys):
                self.leave_other_cases(parent_data, parent, info)
                self.insert(parent_data, placeholder, info, edit, path)
                self.added.append(placeholder)
            return

        new = self.build(edit, info, path, op)
        if existing is not None:  # replace
            if info.ordered_by_user and INSERT_ATTR in edit.attrib:
                parent_data.remove(existing)
                self.insert(parent_data, new, info, edit, path)
            else:
                parent_data.replace(existing, new)
        else:
            self.leave_other_cases(parent_data, parent, info)
            self.insert(parent_data, new, info, edit, path)
            self.added.append(new)

    def leave_other_cases(self, parent_data: etree._Element, parent: NodeInfo | None, info: NodeInfo) -> None:
        """A node of `info`'s case is created: the nodes of the other cases of its choices that
        were there before this edit go (RFC 7950 section 7.9). Nodes of two cases written in
        one edit stay, for validation to refuse."""
        if not info.cases:
            return
        for sibling in list(parent_data):
            if not isinstance(sibling.tag, str) or any(sibling is added for added in self.added):
                continue
            q = etree.QName(sibling)
            other = self.schema.child(parent.schema_path if parent else None, q.namespace or "", q.localname)
            if other is not None and any(choice == mine and case != own
                                         for choice, case in other.cases for mine, own in info.cases):
                parent_data.remove(sibling)

    def apply_children(self, data: etree._Element, info: NodeInfo, path: str,
                       edit: etree._Element, op: str) -> None:
        for child in edit:
            if not isinstance(child.tag, str):
                continue
            q = etree.QName(child)
            if q.namespace == info.namespace and q.localname in info.keys:
                continue
            self.apply(data, info, path, child, op)

    def build(self, edit: etree._Element, info: NodeInfo, path: str, op: str) -> etree._Element:
        if info.keyword in ("leaf", "leaf-list", "anydata", "anyxml"):
            return clean_copy(edit)
        # The edit's prefixes stay in scope (values may use them), but not a default namespace
        # other than the node's own: lxml would let it shadow the node's namespace once placed.
        own = etree.QName(edit).namespace
        new = etree.Element(edit.tag, nsmap={p: uri for p, uri in edit.nsmap.items() if p is not None or uri == own})
        for key in info.keys:
            new.append(clean_copy(edit.find(f"{{{info.namespace}}}{key}")))
        self.apply_children(new, info, path, edit, op)
        return new

    def insert(self, parent_data: etree._Element, new: etree._Element, info: NodeInfo,
               edit: etree._Element, path: str) -> None:
        siblings = [c for c in parent_data if c.tag == new.tag]
        where = edit.get(INSERT_ATTR, "last") if info.ordered_by_user else "last"
        if where not in ("first", "last", "before", "after"):
            raise self.error("bad-attribute", f"insert='{where}' must be first, last, before or after",
                             path, bad_attribute="insert", bad_element=info.name)
        if where == "first" and siblings:
            siblings[0].addprevious(new)
        elif where in ("before", "after"):
            anchor = self.anchor(siblings, info, edit, path)
            (anchor.addprevious if where == "before" else anchor.addnext)(new)
        elif siblings:
            siblings[-1].addnext(new)
        else:
            parent_data.append(new)

    def anchor(self, siblings: list[etree._Element], info: NodeInfo, edit: etree._Element,
               path: str) -> etree._Element:
        if info.keyword == "list":
            spec = edit.get(KEY_ATTR)
            wanted = {m.group(1): m.group(3) for m in _KEY_PREDICATE.finditer(spec or "")}
            match = lambda el: all(_child_text(el, info.namespace, k) == v for k, v in wanted.items())
            attr = "key"
        else:
            spec = edit.get(VALUE_ATTR)
            match = lambda el: (el.text or "").strip() == spec
            attr = "value"
        if spec is None:
            raise self.error("missing-attribute", f"insert before/after needs the '{attr}' attribute",
                             path, bad_attribute=attr, bad_element=info.name)
        for sibling in siblings:
            if match(sibling):
                return sibling
        err = self.error("bad-attribute", f"no '{info.name}' entry {spec} to insert next to", path,
                         bad_attribute=attr, bad_element=info.name)
        err.app_tag = "missing-instance"
        raise err


def _child_text(element: etree._Element, namespace: str, name: str) -> str | None:
    child = element.find(f"{{{namespace}}}{name}")
    if child is None:
        return None
    return (child.text or "").strip()


def _find(parent_data: etree._Element, edit: etree._Element, info: NodeInfo) -> etree._Element | None:
    candidates = parent_data.iterchildren(edit.tag)
    if info.keyword == "list":
        keys = {k: _child_text(edit, info.namespace, k) for k in info.keys}
        for entry in candidates:
            if all(_child_text(entry, info.namespace, k) == v for k, v in keys.items()):
                return entry
        return None
    if info.keyword == "leaf-list":
        value = (edit.text or "").strip()
        for entry in candidates:
            if (entry.text or "").strip() == value:
                return entry
        return None
    return next(candidates, None)


def _quote(value: str) -> str:
    return f"'{value}'" if "'" not in value else f'"{value}"'
