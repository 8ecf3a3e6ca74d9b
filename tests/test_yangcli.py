"""yangcli (yuma123, a third-party NETCONF client) against `qstrata serve`: a script of edits,
commits and gets in batch mode, under `script` since yangcli needs a terminal. Every data reply
yangcli prints is validated by yanglint against the models, and the outcome is checked through
ncclient as well."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from lxml import etree
from ncclient import manager

from conftest import qstrata_serve
from netconf_core.models import PROJECT_MODULES
from tools import conform

NC = conform.NC
XP = conform.XP

pytestmark = pytest.mark.skipif(shutil.which("yangcli") is None or shutil.which("script") is None,
                                reason="yangcli (Debian package yangcli) and script (bsdutils) are needed")


@dataclass
class Server:
    port: int
    password: str

    def running(self) -> etree._Element:
        with manager.connect(host="127.0.0.1", port=self.port, username="admin", password=self.password,
                             hostkey_verify=False, allow_agent=False, look_for_keys=False, timeout=10) as m:
            return etree.fromstring(m.get_config("running").data_xml.encode())


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with qstrata_serve() as served:
        yield Server(served.port, served.password)


@dataclass
class Run:
    output: str
    replies: list[etree._Element]  # every <rpc-reply> yangcli printed, in order

    @property
    def data(self) -> list[etree._Element]:
        return [r.find(f"{{{NC}}}data") for r in self.replies if r.find(f"{{{NC}}}data") is not None]

    @property
    def errors(self) -> list[etree._Element]:
        return [e for r in self.replies for e in r.iterfind(f"{{{NC}}}rpc-error")]


def yangcli(server: Server, home: Path, commands: list[str]) -> Run:
    """Run yangcli non-interactively: batch mode, the commands as its script, replies as XML."""
    script = home / "script.txt"
    script.write_text("\n".join(commands) + "\n")
    argv = ["yangcli", "--server=127.0.0.1", f"--ncport={server.port}", "--user=admin",
            f"--password={server.password}", "--batch-mode", f"--run-script={script}", "--display-mode=xml",
            "--autohistory=false", "--autoaliases=false", "--autouservars=false", "--timeout=20"]
    # HOME: yangcli keeps its ~/.yuma files in the test's directory.
    done = subprocess.run(["script", "-qc", shlex.join(argv), "/dev/null"], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "HOME": str(home)}, stdin=subprocess.DEVNULL)
    output = done.stdout.replace("\r", "")
    replies = [etree.fromstring(block) for block in re.findall(r"<rpc-reply\b.*?</rpc-reply>", output, re.S)]
    return Run(output, replies)


def names(data: etree._Element) -> list[str]:
    return conform.texts(data, "q:interfaces/q:interface/q:name")


def test_script_of_edits_commits_and_gets(server: Server, tmp_path: Path) -> None:
    run = yangcli(server, tmp_path, [
        "merge /system/hostname value=yc-host",
        "create /interfaces/interface -- name=yc5 vlan=55 speed-mbps=100",
        "create /interfaces/interface -- name=yc7 vlan=77",
        "commit",
        "xget /system",
        "sget /interfaces",
        "delete /interfaces/interface[name='yc7']",
        "commit",
        "sget /interfaces",
    ])
    assert "canceled" not in run.output and not run.errors, run.output
    first, second, third = run.data
    assert conform.texts(first, "q:system/q:hostname") == ["yc-host"]
    assert names(second) == ["yc5", "yc7"]
    assert conform.texts(second, "q:interfaces/q:interface[q:name='yc5']/q:speed-mbps") == ["100"]
    assert names(third) == ["yc5"]
    assert conform.yanglint_errors([("get", d) for d in run.data]) == []
    # What yangcli set is what another client reads.
    running = server.running()
    assert conform.texts(running, "q:system/q:hostname") == ["yc-host"]
    assert names(running) == ["yc5"]


def test_invalid_edit_is_rejected_with_the_error_text(server: Server, tmp_path: Path) -> None:
    before = etree.tostring(server.running())
    # yangcli edits the candidate with test-option set, so the must violation surfaces at commit.
    run = yangcli(server, tmp_path, [
        "create /interfaces/interface -- name=yc-slow vlan=99 speed-mbps=5",
        "commit",
    ])
    assert len(run.errors) == 1, run.output
    error = run.errors[0]
    assert error.findtext(f"{{{NC}}}error-tag") == "operation-failed"
    assert error.findtext(f"{{{NC}}}error-app-tag") == "must-violation"
    assert "speed must be at least 10 Mb/s" in error.findtext(f"{{{NC}}}error-message")
    assert "speed must be at least 10 Mb/s" in run.output
    assert etree.tostring(server.running()) == before
    # The candidate keeps the rejected edit (it is shared); clear it for whoever comes next.
    assert yangcli(server, tmp_path, ["discard-changes"]).errors == []


def test_create_subscription_receives_the_config_change(server: Server, tmp_path: Path) -> None:
    """yangcli finds RFC 5277's modules among the server's, subscribes, and prints the
    netconf-config-change its own commit causes, with the edit (RFC 6470)."""
    run = yangcli(server, tmp_path, [
        "create-subscription",
        "merge /system/hostname value=yc-subscribed",
        "commit",
        "xget /system",
    ])
    assert "Unrecognized command" not in run.output and "Missing" not in run.output, run.output
    assert not run.errors, run.output
    notifications = [etree.fromstring(block) for block in
                     re.findall(r"<notification\b.*?</notification>", run.output, re.S)]
    changes = [n.find("{urn:ietf:params:xml:ns:yang:ietf-netconf-notifications}netconf-config-change")
               for n in notifications]
    changes = [c for c in changes if c is not None]
    assert changes, run.output
    ncn = {"ncn": "urn:ietf:params:xml:ns:yang:ietf-netconf-notifications"}
    edits = [(e.findtext("ncn:operation", namespaces=ncn), e.findtext("ncn:target", namespaces=ncn))
             for c in changes for e in c.iterfind("ncn:edit", ncn)]
    assert ("create", "/qs-engine-test:system/qs-engine-test:hostname") in edits \
        or ("replace", "/qs-engine-test:system/qs-engine-test:hostname") in edits \
        or ("create", "/qs-engine-test:system") in edits, edits


# --- yangcli loads every project module from the server ---------------------------------------

# What yuma123 2.13 cannot compile, with the reason: qi-alarms imports the IETF's ietf-alarms
# (RFC 8632), whose notifications inside a list (YANG 1.1, RFC 7950 7.16) yuma123 refuses. No
# model of ours avoids it: the alarm types must be identities derived from ietf-alarms'.
YUMA_CANNOT = {"qi-alarms": "ietf-alarms"}


@pytest.fixture(scope="module")
def every_module() -> Iterator[Server]:
    """`qstrata serve` of every project module, on a free port."""
    modules = [arg for name in PROJECT_MODULES for arg in ("--module", name)]
    with qstrata_serve(serve_args=modules) as served:
        yield Server(served.port, served.password)


def test_yangcli_loads_every_project_module_from_the_server(every_module: Server, tmp_path: Path) -> None:
    """yangcli fetches each module the server announces (get-schema) and compiles it: every
    project module loads but those of YUMA_CANNOT, which fail for the named import alone. The
    QKD node's fault injection (RPCs) and the span's (actions of fibre-span) are commands."""
    run = yangcli(every_module, tmp_path, ["help command=inject-failure", "help command=restart"])
    failed = dict(re.findall(r"Auto-load for module '([\w-]+)' failed \(([^)]*)\)", run.output))
    assert set(failed) == set(YUMA_CANNOT), run.output[-3000:]
    for module, imported in YUMA_CANNOT.items():
        assert f"'{module}@" in run.output and f"import of module '{imported}' failed" in run.output
        assert failed[module] == "imported module has errors"
    errors = [line for line in run.output.splitlines() if line.startswith("Error")]
    assert all("ietf-alarms" in e or "qi-alarms" in e or "'notification'" in e for e in errors), errors
    for announced in PROJECT_MODULES:
        assert re.search(rf"^\s+{re.escape(announced)}@", run.output, re.M), f"{announced} not announced"
    assert "Reason reported in the node's alarms" in run.output  # inject-failure's input, from qi-qkd-node-ext
    assert "How long the node stays down" in run.output  # restart's
