"""XML namespaces, each named once, and the small set of element helpers every level uses.

A `Namespace` is a namespace URI with the helpers bound to it, so that code reads in the
module's own terms: `NW("node")` is the Clark name `{urn:...:ietf-network}node`,
`NW.text(network, "node/node-id")` the stripped text at that path (every step in the
namespace), `NW.sub(parent, "node-id", "a")` a new child. The protocol namespaces the
engine speaks are defined here; the data models' namespaces are in the `models` package.

A child made by `sub` (or `child`) in another namespace than its parent's declares its own as
the default namespace, as the levels' serialisations always did (no generated ns0: prefixes).
`element(tag, leaves={...})` makes a container with one leaf per non-None value; `leaf_text`
writes a bool as 'true'/'false'; `decimal(value, digits)` is a YANG decimal64 in canonical form.
"""
from __future__ import annotations

from lxml import etree


_CLARK_PATHS_KEPT = 4096
_CLARK_PATHS: dict[tuple[str, str], str] = {}


class Namespace(str):
    """A namespace URI (it is the URI string) with element helpers bound to it."""

    def __call__(self, tag: str) -> str:
        """The Clark name of `tag` in this namespace."""
        return f"{{{self}}}{tag}"

    def path(self, path: str) -> str:
        """'a/b' with every step in this namespace, for ElementPath (find, findall, iter). The
        paths are few and read on every lookup: each is built once."""
        key = (self, path)
        clark = _CLARK_PATHS.get(key)
        if clark is None:
            if len(_CLARK_PATHS) >= _CLARK_PATHS_KEPT:
                _CLARK_PATHS.clear()
            clark = _CLARK_PATHS[key] = "/".join(step if step in (".", "..", "*") else self(step)
                                                 for step in path.split("/"))
        return clark

    def find(self, element: etree._Element | None, path: str) -> etree._Element | None:
        return element.find(self.path(path)) if element is not None else None

    def all(self, element: etree._Element | None, path: str) -> list[etree._Element]:
        return element.findall(self.path(path)) if element is not None else []

    def text(self, element: etree._Element | None, path: str, default: str | None = None) -> str | None:
        """The stripped text of the first element at `path` under `element`, or `default`."""
        value = element.findtext(self.path(path)) if element is not None else None
        return value.strip() if value is not None else default

    def number(self, element: etree._Element | None, path: str) -> float | None:
        """The text at `path` as a number; None when absent or not a number."""
        return number(self.text(element, path))

    def sub(self, parent: etree._Element, tag: str, text: object = None) -> etree._Element:
        """A new child `tag` of `parent`, with `text` (str() of it) unless None. A child in
        another namespace than its parent's declares this one as its default namespace."""
        nsmap = {None: str(self)} if etree.QName(parent).namespace != self else None
        child = etree.SubElement(parent, self(tag), nsmap=nsmap)
        if text is not None:
            child.text = str(text)
        return child

    def child(self, parent: etree._Element, tag: str) -> etree._Element:
        """The child `tag` of `parent`, made if there is none."""
        found = parent.find(self(tag))
        return found if found is not None else self.sub(parent, tag)

    def element(self, tag: str, text: object = None, nsmap_prefix: str | None = None,
                leaves: dict[str, object] | None = None) -> etree._Element:
        """A new root element `tag` (declaring this namespace under `nsmap_prefix`, default none),
        with one leaf child per entry of `leaves` that is not None (see `leaf_text`)."""
        root = etree.Element(self(tag), nsmap={nsmap_prefix: str(self)})
        if text is not None:
            root.text = leaf_text(text)
        for name, value in (leaves or {}).items():
            if value is not None:
                self.sub(root, name, leaf_text(value))
        return root


def identity(value: str | None) -> str | None:
    """An identityref's name without its module prefix ('etsi-qkdn-types:PHYS' -> 'PHYS')."""
    return value.strip().rpartition(":")[2] if value else value


def number(text: str | None) -> float | None:
    """`text` as a float; None when absent or not a number."""
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def leaf_text(value: object) -> str:
    """A leaf's text for a Python value: a bool is 'true' or 'false', anything else str() of it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def decimal(value: float, fraction_digits: int) -> str:
    """A YANG decimal64 value in canonical form: rounded to its fraction digits, trailing zeros
    dropped but one ('0.2', '50.0')."""
    text = f"{value:.{fraction_digits}f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def localname(element: etree._Element) -> str:
    """The tag of `element` without its namespace."""
    return etree.QName(element).localname


# --- the protocol namespaces ------------------------------------------------------------------
BASE = Namespace("urn:ietf:params:xml:ns:netconf:base:1.0")          # RFC 6241 messages
YANG_XML = Namespace("urn:ietf:params:xml:ns:yang:1")                 # RFC 7950 insert/key attributes
DEFAULT_ATTR = Namespace("urn:ietf:params:xml:ns:netconf:default:1.0")  # RFC 6243 default="true"
WITH_DEFAULTS = Namespace("urn:ietf:params:xml:ns:yang:ietf-netconf-with-defaults")
NOTIFICATION = Namespace("urn:ietf:params:xml:ns:netconf:notification:1.0")  # RFC 5277 <notification>
NETMOD_NOTIFICATION = Namespace("urn:ietf:params:xml:ns:netmod:notification")  # RFC 5277 streams
NC_NOTIFICATIONS = Namespace("urn:ietf:params:xml:ns:yang:ietf-netconf-notifications")  # RFC 6470 events
MONITORING = Namespace("urn:ietf:params:xml:ns:yang:ietf-netconf-monitoring")
NACM = Namespace("urn:ietf:params:xml:ns:yang:ietf-netconf-acm")
YANG_LIBRARY = Namespace("urn:ietf:params:xml:ns:yang:ietf-yang-library")
DATASTORES = Namespace("urn:ietf:params:xml:ns:yang:ietf-datastores")
SUBSCRIBED_NOTIFICATIONS = Namespace("urn:ietf:params:xml:ns:yang:ietf-subscribed-notifications")
YANG_PUSH = Namespace("urn:ietf:params:xml:ns:yang:ietf-yang-push")
RESTCONF = Namespace("urn:ietf:params:xml:ns:yang:ietf-restconf")
RESTCONF_MONITORING = Namespace("urn:ietf:params:xml:ns:yang:ietf-restconf-monitoring")
YANG_PATCH = Namespace("urn:ietf:params:xml:ns:yang:ietf-yang-patch")
