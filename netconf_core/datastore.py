"""The configuration datastores (running, candidate, startup), kept as lxml trees.

Each tree's root is a NETCONF <data> element whose children are top-level data nodes.
A tree is only ever replaced whole, after validation, and written to disk atomically
(temporary file, fsync, rename) when the store has a directory. The candidate is written
only while it differs from running (it has uncommitted changes); a pending confirmed
commit is written too (`PendingRecord`), so that it is reverted after a crash.

On start, running is loaded from startup when a startup datastore was saved
(RFC 6241 section 8.7), otherwise from the last running saved, so nothing committed
is lost across a restart.
"""
from __future__ import annotations

import copy
import json
import os
import pathlib
from dataclasses import dataclass

from lxml import etree

from .errors import RPCError
from .ns import BASE
from .schema import Schema, own_prefixed_values

DATASTORES = ("running", "candidate", "startup")
DATA_TAG = BASE("data")
PENDING_FILE = "confirmed-commit.json"
_FILE_PARSER = etree.XMLParser(remove_blank_text=True, resolve_entities=False, no_network=True)


class DatastoreError(Exception):
    """A file of the datastore directory cannot be read back: the message names it."""


@dataclass(frozen=True)
class PendingRecord:
    """A confirmed commit not yet confirmed, as saved: the running configuration to go back
    to, the wall-clock deadline (time.time()), the persist-id if given, and the session that
    owns it (a non-persistent one)."""

    backup: etree._Element
    deadline: float
    persist: str | None
    session_id: int | None


def empty_tree() -> etree._Element:
    return etree.Element(DATA_TAG, nsmap={None: BASE})


class Datastores:
    def __init__(self, schema: Schema, directory: pathlib.Path | str | None = None):
        """Raises DatastoreError when a saved file is damaged (not XML, or invalid data)."""
        self.schema = schema
        self.directory = pathlib.Path(directory) if directory else None
        self._trees = {name: empty_tree() for name in DATASTORES}
        candidate = None
        if self.directory:
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise DatastoreError(f"{self.directory}: cannot be the datastore directory: {err}") from None
            for name in ("running", "startup"):
                saved = self._load(name)
                if saved is not None:
                    self._trees[name] = saved
            if self._path("startup").exists():
                self._trees["running"] = copy.deepcopy(self._trees["startup"])
            candidate = self._load("candidate", validate=False)  # validated at commit
        self._trees["candidate"] = self._trees["running"] if candidate is None else candidate

    def __getitem__(self, name: str) -> etree._Element:
        """The live tree: callers must not modify it."""
        return self._trees[name]

    def copy(self, name: str) -> etree._Element:
        return copy.deepcopy(self._trees[name])

    def candidate_changed(self) -> bool:
        """Whether the candidate differs from running (uncommitted changes)."""
        candidate, running = self._trees["candidate"], self._trees["running"]
        return candidate is not running and etree.tostring(candidate) != etree.tostring(running)

    def set(self, name: str, tree: etree._Element) -> None:
        """Replace a datastore with an already validated tree. A candidate that is running's
        own tree (no uncommitted changes) is not written: its file goes."""
        self._trees[name] = tree
        if not self.directory:
            return
        if name == "candidate" and tree is self._trees["running"]:
            self._path(name).unlink(missing_ok=True)
        else:
            self._save(self._path(name), etree.tostring(tree, xml_declaration=True, encoding="utf-8"))

    def clear(self, name: str) -> None:
        self._trees[name] = empty_tree()
        if self.directory and self._path(name).exists():
            self._path(name).unlink()

    # --- the pending confirmed commit -----------------------------------------

    def save_pending(self, record: PendingRecord) -> None:
        if self.directory:
            body = {"deadline": record.deadline, "persist-id": record.persist, "session-id": record.session_id,
                    "backup": etree.tostring(record.backup).decode()}
            self._save(self.directory / PENDING_FILE, json.dumps(body, indent=1).encode())

    def clear_pending(self) -> None:
        if self.directory:
            (self.directory / PENDING_FILE).unlink(missing_ok=True)

    def load_pending(self) -> PendingRecord | None:
        """The confirmed commit pending when the server stopped, or None."""
        path = self.directory / PENDING_FILE if self.directory else None
        if path is None or not path.exists():
            return None
        try:
            body = json.loads(path.read_bytes())
            backup = etree.fromstring(body["backup"].encode(), _FILE_PARSER)
            if backup.tag != DATA_TAG:
                raise ValueError(f"the backup is <{backup.tag}>, not a datastore's <data>")
            persist, session_id = body["persist-id"], body["session-id"]
            if not isinstance(persist, (str, type(None))) or not isinstance(session_id, (int, type(None))):
                raise ValueError("persist-id must be a string and session-id a number")
            return PendingRecord(self.schema.canonical(backup, config_only=True), float(body["deadline"]),
                                 persist, session_id)
        except (ValueError, KeyError, TypeError, AttributeError, etree.XMLSyntaxError, RPCError) as err:
            raise DatastoreError(f"{path}: not a pending confirmed commit this server can read: {err}") from None

    # --- files ----------------------------------------------------------------

    def _path(self, name: str) -> pathlib.Path:
        return self.directory / f"{name}.xml"

    def _load(self, name: str, validate: bool = True) -> etree._Element | None:
        path = self._path(name)
        if not path.exists():
            return None
        try:
            tree = etree.fromstring(path.read_bytes(), _FILE_PARSER)
            if tree.tag != DATA_TAG:
                raise DatastoreError(f"{path}: not a datastore: its root is <{tree.tag}>, not <data> "
                                     f"in {BASE}")
            return self.schema.canonical(tree, config_only=True, validate=validate)
        except etree.XMLSyntaxError as err:
            raise DatastoreError(f"{path}: not well-formed XML: {err}") from None
        except RPCError as err:
            raise DatastoreError(f"{path}: invalid {name} configuration: {err}") from None

    @staticmethod
    def _save(path: pathlib.Path, content: bytes) -> None:
        write_atomically(path, content)


def copy_in_scope(element: etree._Element) -> etree._Element:
    """A deep copy that keeps the prefixes declared on the element's ancestors: values
    (identityrefs, instance-identifiers) may use them. A default namespace other than the
    element's own is left out: lxml mis-binds such an element's tag when it moves again.
    A value prefixed by a declaration on its own leaf for the leaf's own namespace is copied
    unprefixed (`own_prefixed_values`): lxml drops that declaration when the copy moves."""
    own = etree.QName(element).namespace
    nsmap = {prefix: uri for prefix, uri in element.nsmap.items() if prefix is not None or uri == own}
    out = etree.Element(element.tag, attrib=dict(element.attrib), nsmap=nsmap)
    out.text = element.text
    out.extend(copy.deepcopy(child) for child in element)
    values = dict(own_prefixed_values(element))
    if values:
        for original, copied in zip(element.iter(), out.iter()):
            if original in values:
                copied.text = values[original]
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


def write_atomically(path: pathlib.Path, content: bytes | str) -> None:
    """Write a file so that a crash leaves the old one or the new one, never a part (the
    datastores, and the state files of the levels)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(content.encode() if isinstance(content, str) else content)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
