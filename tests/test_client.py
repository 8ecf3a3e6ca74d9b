"""The asyncio NETCONF client against a third-party server: yuma123 netconfd behind OpenSSH.

One netconfd (candidate target) serves the module tests; tests that freeze, kill or
reconfigure the server start their own. Each test uses its own list entries, and the
netconfd fixture discards whatever the previous test left in the candidate (or pending as
a confirmed commit), so the order of tests does not matter.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from lxml import etree
from ncclient import manager
from ncclient.operations import RPCError as NcclientRPCError

from netconf_core.client import NetconfClient, RPCTimeoutError, SessionClosedError
from netconf_core.errors import BASE_NS, RPCError, RPCErrorList
from tools.netconfd import NetconfdServer

T = TypeVar("T")
YANG_DIR = Path(__file__).parent / "yang"
QST = "urn:qstrata:test"
NC_NOTIFICATIONS = "urn:ietf:params:xml:ns:yang:ietf-netconf-notifications"
SETTINGS = f'<settings xmlns="{QST}"/>'
PERSIST_ID = "qs-cc"   # the persistent confirmed commit of one test


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 30))


def q(tag: str) -> str:
    return f"{{{QST}}}{tag}"


def item_filter(name: str) -> tuple[str, str]:
    return ("subtree", f'<settings xmlns="{QST}"><item><name>{name}</name></item></settings>')


def items(data: etree._Element | None) -> dict[str, str | None]:
    assert data is not None
    return {i.findtext(q("name")): i.findtext(q("value")) for i in data.iter(q("item"))}


def connect(netconfd: NetconfdServer, **kwargs: Any) -> Coroutine[Any, Any, NetconfClient]:
    # netconfd, single-threaded, has been seen to take over 10 s (the client's default) to answer
    # a <get> on a loaded 2-core CI machine: give the third-party server 20 s by default (each
    # scenario is bounded at 30 s by run()).
    kwargs.setdefault("timeout", 20.0)
    return NetconfClient.connect(netconfd.host, netconfd.port, netconfd.username,
                                 client_keys=[str(netconfd.client_key)], **kwargs)


async def commit_items(nc: NetconfClient, **values: str) -> None:
    entries = "".join(f"<item><name>{k}</name><value>{v}</value></item>" for k, v in values.items())
    await nc.edit_config(f'<settings xmlns="{QST}">{entries}</settings>', target="candidate")
    await nc.commit()


@pytest.fixture(scope="module")
def shared_netconfd() -> Iterator[NetconfdServer]:
    with NetconfdServer(modules=["qs-test"], yang_dirs=[YANG_DIR]) as srv:
        yield srv


async def leave_nothing_pending(netconfd: NetconfdServer) -> None:
    """Undo what a test that failed or timed out half-way may have left behind: an edited
    candidate (netconfd then refuses to lock it, and the next commit would take the edit
    along) or its persistent confirmed commit."""
    async with await connect(netconfd) as nc:
        with contextlib.suppress(RPCError):   # none pending: the usual case
            await nc.cancel_commit(persist_id=PERSIST_ID)
        await nc.discard_changes()


@pytest.fixture
def netconfd(shared_netconfd: NetconfdServer) -> NetconfdServer:
    """The module's netconfd with nothing pending from the previous test. netconfd has been
    seen to stop answering on a loaded CI machine after the tests that kill sessions or
    freeze it (SIGSTOP): then it is started afresh, so that the next test does not inherit a
    stuck third-party server (a test of the client, not of netconfd)."""
    try:
        run(leave_nothing_pending(shared_netconfd))
    except (RPCTimeoutError, asyncio.TimeoutError, OSError, SessionClosedError):
        shared_netconfd.stop()
        shared_netconfd.start()
        run(leave_nothing_pending(shared_netconfd))
    return shared_netconfd


def test_what_a_broken_off_test_leaves_pending_is_undone_for_the_next(netconfd: NetconfdServer) -> None:
    async def scenario() -> None:
        async with await connect(netconfd) as nc:   # a test cut short after these two steps
            await nc.edit_config(f'<settings xmlns="{QST}"><item><name>cc</name></item></settings>',
                                 target="candidate")
            await nc.commit(confirmed=True, timeout=120, persist=PERSIST_ID)
            await nc.edit_config(f'<settings xmlns="{QST}"><item><name>left</name></item></settings>',
                                 target="candidate")
        async with await connect(netconfd) as nc:
            with pytest.raises(RPCError, match="discard-changes needed"):
                await nc.lock("candidate")
        await leave_nothing_pending(netconfd)
        async with await connect(netconfd) as nc:
            await nc.lock("candidate")
            await nc.unlock("candidate")
            assert items(await nc.get_config(filter=item_filter("cc"))) == {}
            assert items(await nc.get_config("candidate", filter=item_filter("left"))) == {}
    run(scenario())


def test_hello_negotiates_base11_and_reads_capabilities(netconfd: NetconfdServer) -> None:
    async def scenario() -> None:
        async with await connect(netconfd) as a, await connect(netconfd) as b:
            assert a.base11 and b.base11
            assert a.session_id and b.session_id and a.session_id != b.session_id
            assert "urn:ietf:params:netconf:capability:candidate:1.0" in a.server_capabilities
            assert any(c.startswith(f"{QST}?module=qs-test") for c in a.server_capabilities)
            schema = await a.get_schema("qs-test")
            assert schema.lstrip().startswith("module qs-test")
    run(scenario())


def test_base10_end_of_message_framing_when_server_lacks_base11() -> None:
    with NetconfdServer(modules=["qs-test"], yang_dirs=[YANG_DIR],
                        extra_args=["--protocols=netconf1.0"]) as srv:
        async def scenario() -> None:
            async with await connect(srv) as nc:
                assert not nc.base11
                await commit_items(nc, eom="1")
                assert items(await nc.get_config(filter=item_filter("eom"))) == {"eom": "1"}
        run(scenario())


def test_edit_merge_commit_then_delete(netconfd: NetconfdServer) -> None:
    async def scenario() -> None:
        async with await connect(netconfd) as nc:
            await commit_items(nc, m1="one", m2="two")
            assert items(await nc.get_config(filter=item_filter("m1"))) == {"m1": "one"}
            await nc.edit_config(
                f'<settings xmlns="{QST}" xmlns:nc="{BASE_NS}">'
                f'<item nc:operation="delete"><name>m1</name></item></settings>', target="candidate")
            assert items(await nc.get_config("candidate", filter=item_filter("m1"))) == {}
            assert items(await nc.get_config(filter=item_filter("m1"))) == {"m1": "one"}  # not committed yet
            await nc.commit()
            got = await nc.get(filter=("xpath", "/t:settings/t:item[t:name='m1' or t:name='m2']", {"t": QST}))
            assert items(got) == {"m2": "two"}
    run(scenario())


def test_with_defaults_reports_the_default_leaf(netconfd: NetconfdServer) -> None:
    async def scenario() -> None:
        async with await connect(netconfd) as nc:
            await commit_items(nc, wd="x")
            explicit = await nc.get_config(filter=("subtree", SETTINGS))
            report_all = await nc.get_config(filter=("subtree", SETTINGS), with_defaults="report-all")
            assert explicit is not None and report_all is not None
            assert explicit.find(f"{q('settings')}/{q('greeting')}") is None
            assert report_all.findtext(f"{q('settings')}/{q('greeting')}") == "hello"
    run(scenario())


def test_candidate_discard_validate_and_copy(netconfd: NetconfdServer) -> None:
    async def scenario() -> None:
        async with await connect(netconfd) as nc:
            await nc.edit_config(f'<settings xmlns="{QST}"><item><name>d1</name></item></settings>',
                                 target="candidate")
            await nc.validate("candidate")
            await nc.discard_changes()
            assert items(await nc.get_config("candidate", filter=item_filter("d1"))) == {}
            await nc.copy_config(f'<settings xmlns="{QST}"><item><name>c1</name><value>v</value></item></settings>',
                                 target="candidate")
            candidate = await nc.get_config("candidate", filter=("subtree", SETTINGS))
            assert items(candidate) == {"c1": "v"}  # copy-config replaces the whole datastore
            await nc.copy_config("running", target="candidate")
            assert items(await nc.get_config("candidate", filter=item_filter("c1"))) == {}
    run(scenario())


def test_confirmed_commit_cancelled_rolls_running_back(netconfd: NetconfdServer) -> None:
    async def scenario() -> None:
        async with await connect(netconfd) as nc:
            await nc.edit_config(f'<settings xmlns="{QST}"><item><name>cc</name></item></settings>',
                                 target="candidate")
            await nc.commit(confirmed=True, timeout=120, persist=PERSIST_ID)
            assert items(await nc.get_config(filter=item_filter("cc"))) == {"cc": None}
            await nc.cancel_commit(persist_id=PERSIST_ID)
            assert items(await nc.get_config(filter=item_filter("cc"))) == {}
    run(scenario())


def test_lock_denied_to_other_session_until_unlocked(netconfd: NetconfdServer) -> None:
    async def scenario() -> None:
        async with await connect(netconfd) as a, await connect(netconfd) as b:
            await a.lock("candidate")
            with pytest.raises(RPCError) as denied:
                await b.lock("candidate")
            assert denied.value.tag == "lock-denied"
            assert denied.value.info["session-id"] == str(a.session_id)
            with pytest.raises(RPCError) as in_use:
                await b.edit_config(SETTINGS, target="candidate")
            assert in_use.value.tag == "in-use"
            await a.unlock("candidate")
            await b.lock("candidate")
            await b.unlock("candidate")
    run(scenario())


def test_rpc_errors_carry_tag_path_and_info(netconfd: NetconfdServer) -> None:
    async def scenario() -> None:
        async with await connect(netconfd) as nc:
            with pytest.raises(RPCError) as bad:
                await nc.edit_config(f'<settings xmlns="{QST}"><mtu>1</mtu></settings>', target="candidate")
            assert not isinstance(bad.value, RPCErrorList)
            assert (bad.value.tag, bad.value.severity, bad.value.app_tag) == ("invalid-value", "error", "not-in-range")
            assert bad.value.path is not None and bad.value.path.endswith("/qst:settings/qst:mtu")
            assert bad.value.path_nsmap["qst"] == QST
            assert bad.value.info["bad-value"] == "1"

            await commit_items(nc, e1="x")
            with pytest.raises(RPCError) as exists:
                await nc.edit_config(f'<settings xmlns="{QST}" xmlns:nc="{BASE_NS}">'
                                     f'<item nc:operation="create"><name>e1</name></item></settings>',
                                     target="candidate")
            assert exists.value.tag == "data-exists"
            with pytest.raises(RPCError) as missing:
                await nc.edit_config(f'<settings xmlns="{QST}" xmlns:nc="{BASE_NS}">'
                                     f'<item nc:operation="delete"><name>nowhere</name></item></settings>',
                                     target="candidate")
            assert missing.value.tag == "data-missing"

            with pytest.raises(RPCErrorList) as several:
                await nc.edit_config(f'<settings xmlns="{QST}"><mtu>1</mtu><item><name>e2</name><bogus/></item>'
                                     "</settings>", target="candidate", error_option="continue-on-error")
            assert [e.tag for e in several.value.errors] == ["invalid-value", "unknown-element"]
            assert several.value.tag == "invalid-value"
            await nc.discard_changes()
    run(scenario())


def test_dispatch_returns_rpc_output(netconfd: NetconfdServer) -> None:
    async def scenario() -> None:
        async with await connect(netconfd) as nc:
            reply = await nc.dispatch('<get-my-session xmlns="http://netconfcentral.org/ns/yuma-mysession"/>')
            assert reply is not None
            assert reply.findtext("{http://netconfcentral.org/ns/yuma-mysession}indent") is not None
    run(scenario())


def test_twenty_pipelined_gets_each_get_their_own_reply(netconfd: NetconfdServer) -> None:
    names = [f"p{i}" for i in range(20)]

    async def scenario() -> None:
        async with await connect(netconfd) as nc:
            await commit_items(nc, **{n: f"value-{n}" for n in names})
            tasks = [asyncio.create_task(nc.get_config(filter=item_filter(n))) for n in names]
            await asyncio.sleep(0)  # every task has sent its request; no reply handled yet
            assert nc.in_flight == 20
            replies = await asyncio.gather(*tasks)
            assert [items(r) for r in replies] == [{n: f"value-{n}"} for n in names]
            assert nc.in_flight == 0
    run(scenario())


def test_large_values_travel_both_ways(netconfd: NetconfdServer) -> None:
    big = "0123456789abcdef" * (3 * 1024 * 1024 // 16)  # 3 MiB in one leaf

    async def scenario() -> None:
        async with await connect(netconfd) as nc:
            await nc.edit_config(f'<settings xmlns="{QST}"><item><name>big</name><value>{big}</value></item>'
                                 "</settings>", target="candidate")
            assert items(await nc.get_config("candidate", filter=item_filter("big"))) == {"big": big}
            await nc.discard_changes()
    run(scenario())


def test_config_change_notification_then_stream_ends_when_session_is_killed(netconfd: NetconfdServer) -> None:
    async def scenario() -> None:
        async with await connect(netconfd) as a, await connect(netconfd) as b:
            await a.create_subscription()
            await commit_items(b, n1="x")
            notification = await asyncio.wait_for(anext(a.notifications()), 10)
            assert notification.findtext("{urn:ietf:params:xml:ns:netconf:notification:1.0}eventTime")
            change = notification.find(f"{{{NC_NOTIFICATIONS}}}netconf-config-change")
            assert change is not None
            assert change.findtext(f".//{{{NC_NOTIFICATIONS}}}session-id") == str(b.session_id)
            assert await a.get_config(filter=item_filter("n1")) is not None  # replies interleave

            old_id = a.session_id
            await b.kill_session(old_id)
            rest = [n async for n in a.notifications()]  # ends once the server drops a
            assert all(n.tag.endswith("notification") for n in rest)
            with pytest.raises(SessionClosedError):
                await a.get()

            await a.reconnect()
            assert a.session_id != old_id
            assert items(await a.get_config(filter=item_filter("n1"))) == {"n1": "x"}
    run(scenario())


def test_close_session_then_requests_fail(netconfd: NetconfdServer) -> None:
    async def scenario() -> None:
        nc = await connect(netconfd)
        await nc.close_session()
        with pytest.raises(SessionClosedError):
            await nc.get()
    run(scenario())


def test_timeout_on_a_frozen_server_leaves_the_session_usable(netconfd: NetconfdServer) -> None:
    async def scenario() -> None:
        async with await connect(netconfd) as nc:
            os.kill(netconfd.netconfd_pid, signal.SIGSTOP)
            try:
                with pytest.raises(RPCTimeoutError):
                    await nc.rpc(f'<get-config xmlns="{BASE_NS}"><source><running/></source></get-config>',
                                 timeout=0.5)
                assert nc.in_flight == 0
            finally:
                os.kill(netconfd.netconfd_pid, signal.SIGCONT)
            await commit_items(nc, t1="late")  # the late reply to the timed-out get is dropped
            assert items(await nc.get_config(filter=item_filter("t1"))) == {"t1": "late"}
    run(scenario())


def test_a_cancellation_that_arrives_with_the_reply_is_not_lost(netconfd: NetconfdServer) -> None:
    """On Python 3.11, asyncio.wait_for returns the result and drops a cancellation that comes
    in the same loop turn as the reply. A controller stopped at that moment never stopped: its
    notification pump went on, and stop() waited for it for ever."""
    async def scenario() -> None:
        async with await connect(netconfd) as nc:
            request = asyncio.create_task(nc.get_config(filter=item_filter("t2")))
            receive = nc._data_received

            def reply_then_cancel(data: bytes) -> None:  # the reply and the cancellation, in one turn
                receive(data)
                if nc.in_flight == 0:
                    request.cancel()
            nc._data_received = reply_then_cancel  # type: ignore[method-assign]
            with pytest.raises(asyncio.CancelledError):
                await request
            assert nc.in_flight == 0
            assert items(await nc.get_config(filter=item_filter("t2"))) == {}
    run(scenario())


def test_server_death_fails_waiting_requests() -> None:
    with NetconfdServer(modules=["qs-test"], yang_dirs=[YANG_DIR]) as srv:
        async def scenario() -> None:
            nc = await connect(srv)
            os.kill(srv.netconfd_pid, signal.SIGSTOP)  # the request below cannot be answered
            waiting = asyncio.create_task(nc.get())
            await asyncio.sleep(0)
            assert nc.in_flight == 1
            os.kill(srv.netconfd_pid, signal.SIGKILL)
            with pytest.raises(SessionClosedError):
                await waiting
            nc.close()
        run(scenario())


def test_bad_arguments_are_refused_before_sending() -> None:
    async def scenario() -> None:
        with pytest.raises(ValueError, match="password or client_keys"):
            await NetconfClient.connect("127.0.0.1", 1, "nobody")
    run(scenario())


def test_bad_arguments_on_an_open_session(netconfd: NetconfdServer) -> None:
    async def scenario() -> None:
        async with await connect(netconfd) as nc:
            with pytest.raises(ValueError, match="unknown datastore 'bogus'"):
                await nc.get_config("bogus")
            with pytest.raises(ValueError, match="a filter is"):
                await nc.get(filter=("xpath", "/x"))  # type: ignore[arg-type]
            with pytest.raises(ValueError, match="with-defaults"):
                await nc.get(with_defaults="all")
            with pytest.raises(ValueError, match="has no namespace"):
                await nc.rpc("<get/>")
            with pytest.raises(ValueError, match="not the <rpc> wrapper"):
                await nc.rpc(f'<rpc xmlns="{BASE_NS}"><get/></rpc>')
            assert await nc.get(filter=item_filter("nothing-here")) is not None  # session unharmed
    run(scenario())


def test_ncclient_against_the_harness(netconfd: NetconfdServer) -> None:
    with manager.connect(host=netconfd.host, port=netconfd.port, username=netconfd.username,
                         key_filename=str(netconfd.client_key), hostkey_verify=False,
                         allow_agent=False, look_for_keys=False, timeout=30) as m:
        m.edit_config(target="candidate",
                      config=f'<config xmlns="{BASE_NS}"><settings xmlns="{QST}">'
                             "<item><name>ncc</name><value>ok</value></item></settings></config>")
        m.commit()
        reply = m.get_config("running", filter=item_filter("ncc"))
        assert items(reply.data_ele) == {"ncc": "ok"}
        with pytest.raises(NcclientRPCError) as bad:
            m.edit_config(target="candidate",
                          config=f'<config xmlns="{BASE_NS}"><settings xmlns="{QST}"><mtu>1</mtu></settings></config>')
        assert bad.value.tag == "invalid-value"
