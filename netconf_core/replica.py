"""A subscriber's copy of what a YANG-Push datastore subscription selects (RFC 8641), kept
by its updates: a <push-update> replaces the copy, the YANG Patch (RFC 8072) of a
<push-change-update> is applied to it edit by edit. A client that follows a device this way
reads the copy instead of asking the device again after each change.

Edit targets are data resource identifiers (RFC 8040 section 3.5.3) resolved against the
schema of the subscriber's modules. Operations: create and replace set the target to the
edit's value, merge merges the value into it (leaves replaced, children merged by their
keys), delete and remove take the target away, insert and move place a list or leaf-list
entry `where` (first, last, before or after the `point` entry). An edit the copy cannot
follow (a target outside the schema, create of a node that exists, delete of one that does
not) raises RPCError: the copy is out of step and the subscriber should read the device
again (or resync the subscription)."""
from __future__ import annotations

import copy

from lxml import etree

from . import ns
from .errors import RPCError
from .restconf_path import Step, resolve
from .schema import Schema

YP = ns.YANG_PUSH


class Replica:
    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        self.root = ns.BASE.element("data")

    def update(self, notification: etree._Element) -> None:
        """Follow one <push-update> or <push-change-update> (other elements are ignored).
        A change update is applied whole or, on an error, not at all."""
        name = etree.QName(notification).localname
        if name == "push-update":
            self.root = ns.BASE.element("data")
            contents = YP.find(notification, "datastore-contents")
            if contents is not None:
                self.root.extend(copy.deepcopy(child) for child in contents if isinstance(child.tag, str))
        elif name == "push-change-update":
            root = copy.deepcopy(self.root)
            for edit in YP.all(notification, "datastore-changes/yang-patch/edit"):
                self._apply(root, edit)
            self.root = root

    def _apply(self, root: etree._Element, edit: etree._Element) -> None:
        operation = YP.text(edit, "operation") or ""
        target = YP.text(edit, "target") or ""
        steps = resolve(self.schema, [s for s in target.split("/") if s])
        if not steps:
            raise RPCError("invalid-value", f"edit {YP.text(edit, 'edit-id')}: target '{target}' names no data node")
        parent = _walk(root, steps[:-1], create=operation not in ("delete", "remove"))
        current = _find(parent, steps[-1]) if parent is not None else None
        holder = YP.find(edit, "value")
        value = next((v for v in holder if isinstance(v.tag, str)), None) if holder is not None else None
        where = f"edit {YP.text(edit, 'edit-id')} ({operation} {target})"
        if operation in ("delete", "remove"):
            if current is None and operation == "delete":
                raise RPCError("data-missing", f"{where}: the copy holds no such node")
            if current is not None:
                parent.remove(current)
            return
        if value is None and operation != "move":
            raise RPCError("missing-element", f"{where}: no value")
        if operation == "create" and current is not None:
            raise RPCError("data-exists", f"{where}: the copy holds it already")
        if operation == "merge" and current is not None:
            _merge(self.schema, current, value, steps[-1])
            return
        new = copy.deepcopy(value) if value is not None else current
        if new is None:
            raise RPCError("data-missing", f"{where}: nothing to move")
        if operation in ("insert", "move"):
            if current is not None:
                parent.remove(current)
            _place(parent, new, steps, YP.text(edit, "where") or "last", YP.text(edit, "point"), self.schema, where)
        elif current is not None:
            current.getparent().replace(current, new)
        else:
            parent.append(new)


def _matches(element: etree._Element, step: Step) -> bool:
    info = step.info
    if element.tag != info.qname:
        return False
    if info.keyword == "list":
        return all((element.findtext(f"{{{info.namespace}}}{key}") or "").strip() == value
                   for key, value in zip(info.keys, step.values))
    if info.keyword == "leaf-list":
        return (element.text or "").strip() == step.values[0]
    return True


def _find(parent: etree._Element, step: Step) -> etree._Element | None:
    return next((child for child in parent if isinstance(child.tag, str) and _matches(child, step)), None)


def _walk(root: etree._Element, steps: tuple[Step, ...], create: bool) -> etree._Element | None:
    """The element the steps name under `root`; with `create`, made where missing (a list
    entry with its keys)."""
    node = root
    for step in steps:
        found = _find(node, step)
        if found is None:
            if not create:
                return None
            found = etree.SubElement(node, step.info.qname)
            for key, value in zip(step.info.keys, step.values):
                etree.SubElement(found, f"{{{step.info.namespace}}}{key}").text = value
        node = found
    return node


def _merge(schema: Schema, current: etree._Element, value: etree._Element, step: Step) -> None:
    """Merge `value` into `current` (RFC 8072 merge): leaves replaced, containers and list
    entries merged by name and keys."""
    if step.info.keyword not in ("container", "list"):
        current.getparent().replace(current, copy.deepcopy(value))
        return
    for child in value:
        if not isinstance(child.tag, str):
            continue
        q = etree.QName(child)
        info = schema.child(step.info.schema_path, q.namespace or "", q.localname)
        if info is None:
            raise RPCError("unknown-element", f"no data node '{q.localname}' under '{step.info.name}'")
        values = tuple((child.findtext(f"{{{info.namespace}}}{k}") or "").strip() for k in info.keys) \
            if info.keyword == "list" else ((child.text or "").strip(),) if info.keyword == "leaf-list" else ()
        child_step = Step(info, values)
        existing = _find(current, child_step)
        if existing is None:
            current.append(copy.deepcopy(child))
        else:
            _merge(schema, existing, child, child_step)


def _place(parent: etree._Element, new: etree._Element, steps: tuple[Step, ...], where: str, point: str | None,
           schema: Schema, context: str) -> None:
    """Insert `new` into `parent` first, last, or before/after the `point` entry (a resource
    identifier of a sibling entry, as the edit's target is)."""
    if where == "first":
        siblings = [c for c in parent if c.tag == new.tag]
        if siblings:
            siblings[0].addprevious(new)
        else:
            parent.append(new)
        return
    if where == "last":
        siblings = [c for c in parent if c.tag == new.tag]
        if siblings:
            siblings[-1].addnext(new)
        else:
            parent.append(new)
        return
    if where not in ("before", "after") or not point:
        raise RPCError("invalid-value", f"{context}: where '{where}' needs a point, or is not first/last/before/after")
    point_steps = resolve(schema, [s for s in point.split("/") if s])
    anchor = _find(parent, point_steps[-1])
    if anchor is None:
        raise RPCError("data-missing", f"{context}: the point '{point}' is not in the copy")
    if where == "before":
        anchor.addprevious(new)
    else:
        anchor.addnext(new)
