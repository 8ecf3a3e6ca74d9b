"""The conformance suite (tools/conform.py, through ncclient) against `qstrata serve` and against
yuma123 netconfd serving the same model, so that the suite is known to test the RFCs rather than
our reading of them: our server passes every check; netconfd passes every check but its
documented deviations, which are asserted by id so that a change on either side is noticed.
Every get and get-config reply of our server is validated by yanglint against the models."""
from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from lxml import etree

from conftest import qstrata_serve
from tools import conform
from tools.netconfd import NetconfdServer

QSTRATA = str(Path(sys.executable).with_name("qstrata"))

@dataclass
class Served:
    port: int
    password: str
    results: list[conform.Result]
    replies: list[tuple[str, etree._Element]]


@pytest.fixture(scope="module")
def ours() -> Iterator[Served]:
    """`qstrata serve` as a subprocess with the test model, and the suite's results against it."""
    with qstrata_serve() as served:
        replies: list[tuple[str, etree._Element]] = []
        suite = conform.Suite("127.0.0.1", served.port, "admin", password=served.password,
                              on_data=lambda kind, data: replies.append((kind, data)))
        yield Served(served.port, served.password, suite.run(), replies)


@pytest.fixture(scope="module")
def netconfd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NetconfdServer, list[conform.Result]]]:
    """netconfd with the same model (less its action, see conform.without_actions), candidate
    target and a startup datastore, and the suite's results against it."""
    yang_dir = tmp_path_factory.mktemp("netconfd-yang")
    (yang_dir / conform.MODEL_FILE.name).write_text(conform.without_actions(conform.MODEL_FILE.read_text()))
    with NetconfdServer([conform.MODULE], [yang_dir], extra_args=["--with-startup=true"]) as server:
        suite = conform.Suite(server.host, server.port, server.username, key_file=str(server.client_key))
        yield server, suite.run()


def by_id(results: list[conform.Result]) -> dict[str, conform.Result]:
    return {r.id: r for r in results}


@pytest.mark.parametrize("check_id", [
    c for c in [c.id for c in conform.CHECKS] + ["restore"]])
def test_our_server_passes(ours: Served, check_id: str) -> None:
    result = by_id(ours.results)[check_id]
    assert result.status == "pass", f"{result.id} ({result.section}): {result.status}: {result.reason}"


def test_our_get_replies_are_valid_per_yanglint(ours: Served) -> None:
    kinds = {kind for kind, _ in ours.replies}
    assert kinds == {"get", "getconfig"} and len(ours.replies) > 40
    assert conform.yanglint_errors(ours.replies) == []


def test_yanglint_rejects_an_invalid_reply(ours: Served) -> None:
    """The validation above can fail: a reply with an out-of-range mtu does not pass."""
    kind, data = next((k, d) for k, d in ours.replies
                      if k == "getconfig" and d.find(f"{{{conform.NS}}}system") is not None)
    broken = etree.fromstring(etree.tostring(data))
    etree.SubElement(broken.find(f"{{{conform.NS}}}system"), f"{{{conform.NS}}}mtu").text = "100"
    assert len(conform.yanglint_errors([(kind, broken)])) == 1


def test_netconfd_fails_exactly_its_documented_deviations(netconfd) -> None:
    _, results = netconfd
    failed = {r.id: r for r in results if r.status == "fail"}
    assert set(failed) == set(conform.NETCONFD_DEVIATIONS), "\n".join(
        f"{r.id}: {r.reason}" for r in failed.values() if r.id not in conform.NETCONFD_DEVIATIONS)
    assert all(r.deviation.startswith("netconfd deviation: ") for r in failed.values())
    assert [r.id for r in results if r.status == "skip"] == []


def test_every_deviation_names_a_check() -> None:
    ids = {c.id for c in conform.CHECKS}
    assert set(conform.NETCONFD_DEVIATIONS) <= ids


def test_cli_reports_json_and_exit_codes(ours: Served, netconfd) -> None:
    ok = subprocess.run([QSTRATA, "conform", "127.0.0.1", str(ours.port), "--user", "admin",
                         f"--password={ours.password}", "--check", "lock-denied", "--check", "get-schema-unknown", "--json"],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert [(r["id"], r["status"]) for r in json.loads(ok.stdout)] == [
        ("lock-denied", "pass"), ("get-schema-unknown", "pass"), ("restore", "pass")]

    server, _ = netconfd
    bad = subprocess.run([QSTRATA, "conform", server.host, str(server.port), "--user", server.username,
                          "--key", str(server.client_key), "--check", "get-schema-unknown"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "FAIL  get-schema-unknown" in bad.stdout and "netconfd deviation: RFC 6022 3.1" in bad.stdout
