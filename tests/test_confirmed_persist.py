"""A confirmed commit survives a crash of the server (RFC 6241 section 8.4): `qstrata serve
--datastore-dir` is killed with SIGKILL while a confirmed commit is pending, and restarted.
The unconfirmed configuration is reverted when its timeout passed (during the downtime or
after the restart) or when it was not persistent (its session is gone); a persistent one can
still be confirmed or cancelled with its persist-id. The candidate survives too."""
from __future__ import annotations

import pathlib
import subprocess
import sys
import time

import asyncssh
import pytest
from ncclient import manager
from ncclient.operations.rpc import RPCError as NcRPCError
from ncclient.xml_ import to_ele

from conftest import ENGINE_NS, TEST_YANG, ServedProcess, qstrata_serve
from netconf_core import Endpoint, public_key_line
from netconf_core.server import User
from orchestrator.intents import Orchestrator
from orchestrator.store import IntentStore

QSTRATA = str(pathlib.Path(sys.executable).with_name("qstrata"))
NS = {"e": ENGINE_NS}
INT_NS = "urn:qstrata:yang:qi-intent"


def served(datastore_dir: pathlib.Path):
    """`qstrata serve` of the engine test model with its datastores in `datastore_dir`,
    killed (SIGKILL, as a crash) on exit if still running."""
    return qstrata_serve(datastore_dir, crash_on_exit=True)


def crash(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
        process.wait(10)


def connect(served_process: ServedProcess):
    return manager.connect(host="127.0.0.1", port=served_process.port, username="admin",
                           password=served_process.password, hostkey_verify=False, allow_agent=False,
                           look_for_keys=False, timeout=30)


def hostname(m, source: str = "running") -> str | None:
    data = to_ele(m.get_config(source, filter=("subtree", f'<system xmlns="{ENGINE_NS}"/>')).data_xml)
    found = data.xpath("//e:system/e:hostname/text()", namespaces=NS)
    return found[0] if found else None


def set_hostname(m, name: str, target: str = "candidate") -> None:
    m.edit_config(target=target, config=f'<config xmlns="urn:ietf:params:xml:ns:netconf:base:1.0">'
                                        f'<system xmlns="{ENGINE_NS}"><hostname>{name}</hostname></system></config>')


def wait_for_hostname(m, expected: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while hostname(m) != expected and time.monotonic() < deadline:
        time.sleep(0.1)
    assert hostname(m) == expected


def commit_unconfirmed(datastore_dir: pathlib.Path, **confirmed) -> None:
    """Commit 'confirmed-old' for good, then 'unconfirmed' as a confirmed commit, and crash."""
    with served(datastore_dir) as server:
        with connect(server) as m:
            set_hostname(m, "confirmed-old")
            m.commit()
            set_hostname(m, "unconfirmed")
            m.commit(confirmed=True, **confirmed)
            assert hostname(m) == "unconfirmed"
        crash(server.process)


def test_timeout_passed_while_down_reverts_at_restart(tmp_path):
    commit_unconfirmed(tmp_path, timeout="2", persist="while-down")
    time.sleep(2.5)  # the confirm-timeout passes while no server runs
    with served(tmp_path) as server, connect(server) as m:
        wait_for_hostname(m, "confirmed-old")
        with pytest.raises(NcRPCError) as err:
            m.cancel_commit(persist_id="while-down")
        assert err.value.tag == "operation-failed" and "no confirmed commit is pending" in err.value.message
        assert hostname(m, "candidate") == "confirmed-old"
    with served(tmp_path) as server, connect(server) as m:  # and the revert was saved
        assert hostname(m) == "confirmed-old"


def test_timeout_passing_after_restart_reverts(tmp_path):
    commit_unconfirmed(tmp_path, timeout="4", persist="soon")
    with served(tmp_path) as server, connect(server) as m:
        assert hostname(m) == "unconfirmed"  # still waiting for its confirmation
        wait_for_hostname(m, "confirmed-old")


def test_persist_id_confirms_after_restart(tmp_path):
    commit_unconfirmed(tmp_path, timeout="120", persist="token-a")
    with served(tmp_path) as server:
        with connect(server) as m:
            assert hostname(m) == "unconfirmed"
            with pytest.raises(NcRPCError) as err:
                m.commit()  # a persistent commit is confirmed by its persist-id only
            assert err.value.tag == "invalid-value"
            with pytest.raises(NcRPCError) as err:
                m.commit(persist_id="token-b")
            assert err.value.tag == "invalid-value"
            m.commit(persist_id="token-a")
            assert hostname(m) == "unconfirmed"
        crash(server.process)
    with served(tmp_path) as server, connect(server) as m:  # confirmed for good, across a crash too
        time.sleep(0.5)
        assert hostname(m) == "unconfirmed"
        with pytest.raises(NcRPCError):
            m.cancel_commit(persist_id="token-a")


def test_persist_id_cancels_after_restart(tmp_path):
    commit_unconfirmed(tmp_path, timeout="120", persist="token-c")
    with served(tmp_path) as server, connect(server) as m:
        assert hostname(m) == "unconfirmed"
        with pytest.raises(NcRPCError) as err:
            m.cancel_commit(persist_id="wrong")
        assert err.value.tag == "invalid-value"
        assert hostname(m) == "unconfirmed"  # a refused cancel changes nothing
        m.cancel_commit(persist_id="token-c")
        assert hostname(m) == "confirmed-old"


def test_non_persistent_confirmed_commit_reverts_at_restart(tmp_path):
    commit_unconfirmed(tmp_path, timeout="120")  # its session ends with the crash
    with served(tmp_path) as server, connect(server) as m:
        wait_for_hostname(m, "confirmed-old")
        with pytest.raises(NcRPCError) as err:
            m.commit(persist_id="anything")
        assert err.value.tag == "invalid-value"


def test_candidate_survives_a_crash(tmp_path):
    with served(tmp_path) as server:
        with connect(server) as m:
            set_hostname(m, "committed")
            m.commit()
            set_hostname(m, "not-yet-committed")
        crash(server.process)
    with served(tmp_path) as server, connect(server) as m:
        assert hostname(m, "candidate") == "not-yet-committed"
        assert hostname(m) == "committed"
        with pytest.raises(NcRPCError) as err:
            m.lock("candidate")  # it holds changes no session committed (RFC 6241 section 7.5)
        assert err.value.tag == "lock-denied"
        m.commit()
        assert hostname(m) == "not-yet-committed"
        m.lock("candidate")
        m.unlock("candidate")


def test_damaged_datastore_file_is_named_at_start_up(tmp_path):
    (tmp_path / "running.xml").write_text("<data xmlns='urn:ietf:params:xml:ns:netconf:base:1.0'><unclosed>")
    (tmp_path / "startup.xml").unlink(missing_ok=True)
    result = subprocess.run([QSTRATA, "serve", "--yang", str(TEST_YANG), "--module", "qs-engine-test",
                             "--port", "0", "--password=x", "--datastore-dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"{tmp_path / 'running.xml'}: not well-formed XML" in result.stderr
    (tmp_path / "running.xml").unlink()
    (tmp_path / "confirmed-commit.json").write_text('{"deadline": "soon"}')
    result = subprocess.run([QSTRATA, "serve", "--yang", str(TEST_YANG), "--module", "qs-engine-test",
                             "--port", "0", "--password=x", "--datastore-dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{tmp_path / 'confirmed-commit.json'}: not a pending confirmed commit" in result.stderr



def test_orchestrator_reverts_a_confirmed_intent_left_by_its_last_run(tmp_path, loop_thread):
    """The orchestrator's running configuration is rebuilt from its intent store at start; a
    confirmed commit whose timeout passed while it was down is reverted through its change
    handler, so the store forgets the unconfirmed intent too. (Its strata are unreachable here:
    taking in a configuration needs only the store.)"""
    nowhere = Endpoint("nowhere", "127.0.0.1", 9, "admin", "admin",
                       host_key=public_key_line(asyncssh.generate_private_key("ssh-ed25519")))  # never reached
    users = {"admin": User(password="admin-pw")}

    async def started() -> Orchestrator:
        orchestrator = Orchestrator("orchestrator", nowhere, nowhere, nowhere, users, tmp_path / "store", period=3600)
        await orchestrator.start()
        return orchestrator

    def intent_names(m) -> list[str]:
        data = to_ele(m.get_config("running", filter=("subtree", f'<intents xmlns="{INT_NS}"/>')).data_xml)
        return data.xpath("//i:intent/i:name/text()", namespaces={"i": INT_NS})

    def ncclient(orchestrator: Orchestrator):
        return manager.connect(host="127.0.0.1", port=orchestrator.port, username="admin", password="admin-pw",
                               hostkey_verify=False, allow_agent=False, look_for_keys=False, timeout=30)

    first = loop_thread.run(started())
    with ncclient(first) as m:
        m.edit_config(target="candidate", config=(
            f"<config xmlns='urn:ietf:params:xml:ns:netconf:base:1.0'><intents xmlns='{INT_NS}'><intent>"
            "<name>unconfirmed</name><endpoints><source-sae>sae-a</source-sae><destination-sae>sae-b"
            "</destination-sae></endpoints><min-rate>1000</min-rate></intent></intents></config>"))
        m.commit(confirmed=True, timeout="1", persist="p")
        assert intent_names(m) == ["unconfirmed"]
    loop_thread.run(first.stop())  # stops its timer: as good as a crash for a persistent commit
    time.sleep(1.5)
    second = loop_thread.run(started())
    try:
        with ncclient(second) as m:
            deadline = time.monotonic() + 15
            while intent_names(m) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert intent_names(m) == []
    finally:
        loop_thread.run(second.stop())
    store = IntentStore(tmp_path / "store")
    try:
        assert [r.deleted for r in store.intents()] == [True]
    finally:
        store.close()
