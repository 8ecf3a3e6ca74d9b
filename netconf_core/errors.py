"""rpc-error (RFC 6241 section 4.3 and Appendix A): one exception type for server and client."""
from __future__ import annotations

from dataclasses import dataclass, field

from lxml import etree

from .ns import BASE

BASE_NS = BASE  # the name levels and older modules import; the namespace is netconf_core.ns.BASE

ERROR_TYPES = ("transport", "rpc", "protocol", "application")
ERROR_TAGS = (
    "in-use", "invalid-value", "too-big", "missing-attribute", "bad-attribute",
    "unknown-attribute", "missing-element", "bad-element", "unknown-element",
    "unknown-namespace", "access-denied", "lock-denied", "resource-denied",
    "rollback-failed", "data-exists", "data-missing", "operation-not-supported",
    "operation-failed", "partial-operation", "malformed-message",
)


@dataclass
class RPCError(Exception):
    """One rpc-error. `info` maps error-info child names to text (RFC 6241 Appendix A names:
    bad-attribute, bad-element, bad-namespace, session-id, ok-element, err-element, noop-element)."""

    tag: str
    message: str = ""
    type: str = "application"
    severity: str = "error"
    path: str | None = None
    app_tag: str | None = None
    info: dict[str, str] = field(default_factory=dict)
    # Namespace bindings for the prefixes used in `path`, so that it is valid XPath for the client.
    path_nsmap: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        Exception.__init__(self, str(self))

    def __str__(self) -> str:
        where = f" at {self.path}" if self.path else ""
        return f"{self.type}/{self.tag}{where}: {self.message}"

    def to_xml(self) -> etree._Element:
        # What this server sends must be standard; what a client receives is taken as it is.
        if self.tag not in ERROR_TAGS or self.type not in ERROR_TYPES:
            raise ValueError(f"non-standard rpc-error {self.type}/{self.tag}")
        err = etree.Element(BASE("rpc-error"), nsmap={None: BASE})
        etree.SubElement(err, BASE("error-type")).text = self.type
        etree.SubElement(err, BASE("error-tag")).text = self.tag
        etree.SubElement(err, BASE("error-severity")).text = self.severity
        if self.app_tag:
            etree.SubElement(err, BASE("error-app-tag")).text = self.app_tag
        if self.path:
            path = etree.SubElement(err, BASE("error-path"), nsmap=self.path_nsmap or None)
            path.text = self.path
        if self.message:
            msg = etree.SubElement(err, BASE("error-message"))
            msg.set("{http://www.w3.org/XML/1998/namespace}lang", "en")
            msg.text = self.message
        if self.info:
            info = etree.SubElement(err, BASE("error-info"))
            for name, value in self.info.items():
                etree.SubElement(info, BASE(name)).text = str(value)
        return err

    @classmethod
    def from_xml(cls, err: etree._Element) -> "RPCError":
        def text(name: str) -> str | None:
            node = err.find(BASE(name))
            return node.text.strip() if node is not None and node.text else None

        info: dict[str, str] = {}
        info_node = err.find(BASE("error-info"))
        if info_node is not None:
            for child in info_node:
                info[etree.QName(child).localname] = (child.text or "").strip()
        path_node = err.find(BASE("error-path"))
        return cls(
            tag=text("error-tag") or "operation-failed",
            message=text("error-message") or "",
            type=text("error-type") or "application",
            severity=text("error-severity") or "error",
            path=text("error-path"),
            app_tag=text("error-app-tag"),
            info=info,
            path_nsmap={k: v for k, v in (path_node.nsmap.items() if path_node is not None else []) if k},
        )


class RPCErrorList(RPCError):
    """Several rpc-errors in one rpc-reply; behaves as the first, carries all in `errors`."""

    def __init__(self, errors: list[RPCError]):
        first = errors[0]
        super().__init__(first.tag, first.message, first.type, first.severity, first.path,
                         first.app_tag, first.info, first.path_nsmap)
        self.errors = errors
