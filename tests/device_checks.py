"""What the device tests share: yanglint's verdict on what a device sends, and waiting for a
device's notifications over a real NETCONF session."""
from __future__ import annotations

import asyncio
import pathlib
import subprocess

from lxml import etree

from netconf_core.client import NetconfClient
from netconf_core.models import PROJECT_MODULES
from netconf_core.yangdirs import PROJECT_YANG_DIR, SEARCH_DIRS

NOTIFICATION_NS = "urn:ietf:params:xml:ns:netconf:notification:1.0"


def yanglint(kind: str, elements: list[etree._Element], directory: pathlib.Path) -> None:
    """Fail unless yanglint accepts `elements` as a document of type `kind` (data, config, notif)
    against every project module."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{kind}-{len(list(directory.iterdir()))}.xml"
    path.write_bytes(b"".join(etree.tostring(e) for e in elements))
    command = ["yanglint", "-D", "-t", kind]
    for search_dir in SEARCH_DIRS:
        command += ["-p", str(search_dir)]
    command += [str(PROJECT_YANG_DIR / f"{module}.yang") for module in PROJECT_MODULES]
    result = subprocess.run(command + [str(path)], capture_output=True, text=True)
    assert result.returncode == 0, f"yanglint refuses {path}:\n{result.stderr}"


async def validated_get(nc: NetconfClient, root: str, directory: pathlib.Path) -> etree._Element:
    """<get> of one module's top-level node (`root`, e.g. '<optical-switch xmlns="..."/>'),
    checked by yanglint as state data; returns that node."""
    data = await nc.get(("subtree", root))
    assert data is not None and len(data) == 1, "the device returned nothing for its own module"
    yanglint("data", list(data), directory)
    return data[0]


async def next_notification(nc: NetconfClient, tag: str, directory: pathlib.Path,
                            timeout: float = 10.0) -> etree._Element:
    """The next notification whose content is `tag` ('{namespace}name'), others skipped; checked
    by yanglint. Fails after `timeout` seconds."""
    async def wait() -> etree._Element:
        async for message in nc.notifications():
            content = next(c for c in message if etree.QName(c).namespace != NOTIFICATION_NS)
            if content.tag == tag:
                return content
        raise AssertionError(f"the session ended before a {tag} notification")
    content = await asyncio.wait_for(wait(), timeout)
    yanglint("notif", [content], directory)
    return content
