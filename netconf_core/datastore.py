"""The configuration datastores (running, candidate, startup), kept as lxml trees.

Each tree's root is a NETCONF <data> element whose children are top-level data nodes.
A tree is only ever replaced whole, after validation, and written to disk atomically
(temporary file, fsync, rename) when the store has a directory.

On start, running is loaded from startup when a startup datastore was saved
(RFC 6241 section 8.7), otherwise from the last running saved, so nothing committed
is lost across a restart.
"""
from __future__ import annotations

import copy
import os
import pathlib

from lxml import etree

from .errors import BASE_NS
from .schema import Schema

DATASTORES = ("running", "candidate", "startup")
DATA_TAG = f"{{{BASE_NS}}}data"


def empty_tree() -> etree._Element:
    return etree.Element(DATA_TAG, nsmap={None: BASE_NS})


class Datastores:
    def __init__(self, schema: Schema, directory: pathlib.Path | str | None = None):
        self.schema = schema
        self.directory = pathlib.Path(directory) if directory else None
        self._trees = {name: empty_tree() for name in DATASTORES}
        if self.directory:
            self.directory.mkdir(parents=True, exist_ok=True)
            for name in ("running", "startup"):
                saved = self._load(name)
                if saved is not None:
                    self._trees[name] = saved
            if self._path("startup").exists():
                self._trees["running"] = copy.deepcopy(self._trees["startup"])
        self._trees["candidate"] = self._trees["running"]

    def __getitem__(self, name: str) -> etree._Element:
        """The live tree: callers must not modify it."""
        return self._trees[name]

    def copy(self, name: str) -> etree._Element:
        return copy.deepcopy(self._trees[name])

    def set(self, name: str, tree: etree._Element) -> None:
        """Replace a datastore with an already validated tree."""
        self._trees[name] = tree
        if self.directory and name != "candidate":
            self._save(name, tree)

    def clear(self, name: str) -> None:
        self._trees[name] = empty_tree()
        if self.directory and self._path(name).exists():
            self._path(name).unlink()

    def _path(self, name: str) -> pathlib.Path:
        return self.directory / f"{name}.xml"

    def _load(self, name: str) -> etree._Element | None:
        path = self._path(name)
        if not path.exists():
            return None
        tree = etree.fromstring(path.read_bytes(), etree.XMLParser(remove_blank_text=True, resolve_entities=False))
        return self.schema.canonical(tree, config_only=True)

    def _save(self, name: str, tree: etree._Element) -> None:
        path = self._path(name)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(etree.tostring(tree, xml_declaration=True, encoding="utf-8"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


def copy_in_scope(element: etree._Element) -> etree._Element:
    """A deep copy that keeps the prefixes declared on the element's ancestors: values
    (identityrefs, instance-identifiers) may use them. A default namespace other than the
    element's own is left out: lxml mis-binds such an element's tag when it moves again."""
    own = etree.QName(element).namespace
    nsmap = {prefix: uri for prefix, uri in element.nsmap.items() if prefix is not None or uri == own}
    out = etree.Element(element.tag, attrib=dict(element.attrib), nsmap=nsmap)
    out.text = element.text
    out.extend(copy.deepcopy(child) for child in element)
    return out


def merge_state(schema: Schema, base: etree._Element, addition: etree._Element) -> None:
    """Merge the children of `addition` (state data from a provider) into `base` in place,
    matching containers by name, list entries by key and leaf-list entries by value."""
    index = _ChildIndex(schema, base)
    for child in addition:
        if not isinstance(child.tag, str):
            continue
        match = index.find(child)
        if match is None:
            base.append(copy.deepcopy(child))
        elif len(child):
            merge_state(schema, match, child)
        else:
            match.text = child.text


class _ChildIndex:
    """The children of one element, by tag and then by identity (list keys, leaf-list value),
    built once per merge so that merging n list entries is not n x n."""

    def __init__(self, schema: Schema, parent: etree._Element):
        self.schema = schema
        self.parent = parent
        self.by_tag: dict[str, tuple[object, dict[tuple, etree._Element]]] = {}

    def find(self, child: etree._Element) -> etree._Element | None:
        if child.tag not in self.by_tag:
            candidates = list(self.parent.iterchildren(child.tag))
            if not candidates:
                return None
            info = self.schema.node_for(candidates[0])
            self.by_tag[child.tag] = (info, {_identity(info, c): c for c in reversed(candidates)})
        info, entries = self.by_tag[child.tag]
        return entries.get(_identity(info, child))


def _identity(info, element: etree._Element) -> tuple:
    """What tells apart the instances of one schema node: list keys, a leaf-list's value, or
    nothing (containers, leaves, and nodes the schema does not know)."""
    if info is not None and info.keyword == "list":
        return tuple((element.findtext(f"{{{info.namespace}}}{k}") or "").strip() for k in info.keys)
    if info is not None and info.keyword == "leaf-list":
        return ((element.text or "").strip(),)
    return ()
