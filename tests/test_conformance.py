"""The conformance suite (tools/conform.py, through ncclient) against `qstrata serve` and against
yuma123 netconfd serving the same model, so that the suite is known to test the RFCs rather than
our reading of them: our server passes every check; netconfd passes every check but its
documented deviations, which are asserted by id so that a change on either side is noticed.
Every get and get-config reply of our server is validated by yanglint against the models.
Against a server of other modules (the README's example, qi-optical-switch) the suite runs the
protocol checks and skips the model's, naming the module they need. The RESTCONF section runs
against our RestconfServer on a server of the test model (urllib; netconfd and `qstrata serve`
offer no RESTCONF, and the section is skipped there, saying so); the YANG-Push section runs
wherever ietf-yang-push is advertised (ours, not netconfd)."""
from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from lxml import etree
from ncclient import manager

from conftest import LoopThread, qstrata_serve, start_server
from netconf_core.restconf import RestconfServer
from tools import conform
from tools.netconfd import NetconfdServer

QSTRATA = str(Path(sys.executable).with_name("qstrata"))
ROOT = Path(__file__).resolve().parents[1]

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


RESTCONF_CHECKS = {c.id for c in conform.CHECKS if c.restconf}
PUSH_CHECKS = {c.id for c in conform.CHECKS if c.id.startswith("push-")}


@dataclass
class RestconfServed:
    url: str
    port: int  # NETCONF
    results: list[conform.Result]


@pytest.fixture(scope="module")
def ours_restconf(engine_schema) -> Iterator[RestconfServed]:
    """Our NETCONF server of the test model with RESTCONF on, and the RESTCONF section's results
    against it (the address found by the suite in restconf-state)."""
    loop = LoopThread()
    running = start_server(loop, engine_schema)
    restconf = RestconfServer(running.server, "127.0.0.1", 0)
    loop.run(restconf.start())
    try:
        suite = conform.Suite("127.0.0.1", running.port, "admin", password="admin-pw")
        yield RestconfServed(restconf.url, running.port, suite.run(RESTCONF_CHECKS))
    finally:
        loop.run(restconf.stop())
        loop.run(running.server.stop())
        loop.close()


def by_id(results: list[conform.Result]) -> dict[str, conform.Result]:
    return {r.id: r for r in results}


@pytest.mark.parametrize("check_id", [
    c for c in [c.id for c in conform.CHECKS] + ["restore"]])
def test_our_server_passes(request, check_id: str) -> None:
    served = request.getfixturevalue("ours_restconf" if check_id in RESTCONF_CHECKS else "ours")
    result = by_id(served.results)[check_id]
    assert result.status == "pass", f"{result.id} ({result.section}): {result.status}: {result.reason}"


def test_the_restconf_section_ran_with_the_address_restconf_state_names(ours_restconf) -> None:
    assert {r.id for r in ours_restconf.results} == RESTCONF_CHECKS | {"restore"} and len(RESTCONF_CHECKS) >= 15


def test_the_restconf_checks_fail_against_a_server_of_other_data(engine_schema) -> None:
    """The RESTCONF section can fail: pointed at the RESTCONF of a second server (its own
    datastore), the data checks see neither the fixture the suite wrote over NETCONF nor,
    over NETCONF, what they wrote; the protocol-only ones still pass."""
    loop = LoopThread()
    first, second = start_server(loop, engine_schema), start_server(loop, engine_schema)
    restconf = RestconfServer(second.server, "127.0.0.1", 0)
    loop.run(restconf.start())
    try:
        results = conform.Suite("127.0.0.1", first.port, "admin", password="admin-pw",
                                restconf=restconf.url).run(RESTCONF_CHECKS)
    finally:
        loop.run(restconf.stop())
        for running in (first, second):
            loop.run(running.server.stop())
        loop.close()
    status = {r.id: r.status for r in results}
    assert {"restconf-get-json", "restconf-post", "restconf-yang-patch", "restconf-etag"} <= {
        i for i, s in status.items() if s == "fail"}
    assert status["restconf-discovery"] == status["restconf-auth"] == "pass"


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
    skipped = {r.id: r for r in results if r.status == "skip"}  # no RESTCONF, no YANG-Push: nothing else
    assert set(skipped) == RESTCONF_CHECKS | PUSH_CHECKS
    assert all("RESTCONF" in skipped[i].reason for i in RESTCONF_CHECKS)
    assert all(skipped[i].reason.startswith("needs module ietf-") for i in PUSH_CHECKS)


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


def test_cli_runs_the_restconf_checks_at_the_address_given(ours_restconf) -> None:
    run = subprocess.run([QSTRATA, "conform", "127.0.0.1", str(ours_restconf.port), "--user", "admin",
                          "--password=admin-pw", "--restconf", ours_restconf.url, "--check", "restconf-etag",
                          "--check", "push-on-change"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "PASS  restconf-etag" in run.stdout and "PASS  push-on-change" in run.stdout
    nowhere = subprocess.run([QSTRATA, "conform", "127.0.0.1", str(ours_restconf.port), "--user", "admin",
                              "--password=admin-pw", "--restconf", "http://127.0.0.1:9", "--check", "restconf-etag"],
                             capture_output=True, text=True, timeout=120)
    assert nowhere.returncode == 0, nowhere.stdout + nowhere.stderr
    assert "SKIP  restconf-etag" in nowhere.stdout and "no RESTCONF at http://127.0.0.1:9" in nowhere.stdout


# --- any server: the README's example ----------------------------------------------------


@contextlib.contextmanager
def serve_optical_switch() -> Iterator[tuple[int, str]]:
    """The README's `qstrata serve --module qi-optical-switch ... --password ...`, on a free port."""
    with qstrata_serve(serve_args=("--module", "qi-optical-switch")) as served:
        yield served.port, served.password


MODEL_CHECKS = {c.id for c in conform.CHECKS if c.modules == conform.MODEL and not c.restconf}
SCRATCH_CHECKS = {c.id for c in conform.CHECKS if c.modules == conform.SCRATCH}


def test_any_server_passes_every_check_its_modules_allow_and_names_the_skipped() -> None:
    with serve_optical_switch() as (port, password):
        results = conform.Suite("127.0.0.1", port, "admin", password=password).run()
        cli = subprocess.run([QSTRATA, "conform", "127.0.0.1", str(port), "--user", "admin",
                              f"--password={password}"], capture_output=True, text=True, timeout=120)
        with manager.connect(host="127.0.0.1", port=port, username="admin", password=password,
                             hostkey_verify=False, allow_agent=False, look_for_keys=False, timeout=30) as m:
            running = m.get_config("running").xml
    assert [f"{r.id}: {r.reason}" for r in results if r.status == "fail"] == []
    skipped = {r.id: r for r in results if r.status == "skip"}
    # the protocol's own checks all ran, those of one value and YANG-Push's on a NACM group;
    # `qstrata serve` has no RESTCONF
    assert set(skipped) == MODEL_CHECKS | RESTCONF_CHECKS
    assert len(SCRATCH_CHECKS) == 9 and conform.SCRATCH_GROUP not in running  # ... removed at the end
    assert all(r.needs_module == conform.MODULE and f"needs module {conform.MODULE}" in r.reason
               for i, r in skipped.items() if i in MODEL_CHECKS)
    assert all(r.reason.startswith("the server offers no RESTCONF: its restconf-state names no RESTCONF address")
               for i, r in skipped.items() if i in RESTCONF_CHECKS)
    passed = {r.id for r in results if r.status == "pass"}
    assert passed == {c.id for c in conform.CHECKS} - MODEL_CHECKS - RESTCONF_CHECKS | {"restore"}
    assert PUSH_CHECKS <= passed and len(PUSH_CHECKS) == 7
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert f"skipped: needs module {conform.MODULE} ({len(MODEL_CHECKS)} checks)" in cli.stdout
    assert "skipped: the server offers no RESTCONF" in cli.stdout and f"({len(RESTCONF_CHECKS)} checks)" in cli.stdout
    assert f"0 failed, {len(MODEL_CHECKS) + len(RESTCONF_CHECKS)} skipped" in cli.stdout


def test_the_suite_ships_its_model_and_reads_nothing_under_tests() -> None:
    assert conform.MODEL_FILE.is_file() and not conform.MODEL_FILE.is_symlink()
    assert "tests" not in conform.MODEL_FILE.relative_to(ROOT).parts
    assert re.search(rf"module {conform.MODULE} {{", conform.MODEL_FILE.read_text())
    for source in (ROOT / "tools").rglob("*.py"):
        assert not re.search(r"[\"'/]tests[\"'/]", source.read_text()), f"{source.name} names tests/"


def test_serve_of_a_module_not_found_says_which_and_where_it_looked(tmp_path) -> None:
    run = subprocess.run([QSTRATA, "serve", "--module", "qi-optical-switch", "--module", "no-such-module",
                          "--yang", str(tmp_path), "--port", "0"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2, run.stdout + run.stderr
    assert "Traceback" not in run.stderr and run.stdout == ""
    assert "module no-such-module not found" in run.stderr
    assert f"looked in {tmp_path}, " in run.stderr and "--yang DIR" in run.stderr
    (tmp_path / "broken.yang").write_text("module broken {\n  namespace")
    run = subprocess.run([QSTRATA, "serve", "--module", "broken", "--yang", str(tmp_path), "--port", "0"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert run.stderr.startswith("qstrata serve: cannot load the modules: ") and '"broken"' in run.stderr
