"""Host keys verified, over real NETCONF servers and real SSH: a DeviceLink refuses a server
whose host key changed or is unknown (it never opens a session, says why, and backs off),
connects with the right key (pinned, or from a known_hosts file), and an Endpoint that pins
nothing is refused; a server's host key survives a restart on its datastore directory."""
import asyncio
import os
import stat

import asyncssh
import pytest

from conftest import TEST_YANG
from netconf_core import NetconfClient, UnpinnedEndpoint, UntrustedHostKey
from netconf_core.link import BACKOFF_MAX, DeviceLink, Endpoint
from netconf_core.schema import Schema
from netconf_core.server import HOST_KEY_FILE, NetconfServer, User, standard_nacm
from netconf_core.ssh import fingerprint, public_key_line

SCHEMA = Schema(["qs-engine-test"], [TEST_YANG])


def server(port: int = 0, host_key=None, datastore_dir=None) -> NetconfServer:
    return NetconfServer(SCHEMA, {"admin": User(password="pw")}, nacm=standard_nacm(["admin"], []), port=port,
                         host_key=host_key, datastore_dir=datastore_dir, name="dev")


async def until(condition, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


def test_a_link_refuses_a_device_whose_host_key_changed_and_connects_with_the_right_key():
    async def scenario():
        first = server()
        await first.start()
        pinned = first.public_host_key
        link = DeviceLink(Endpoint("dev", "127.0.0.1", first.port, "admin", "pw", host_key=pinned),
                          ("qs-engine-test",))
        link.start()
        try:
            await asyncio.wait_for(link.connected.wait(), 10)
            assert link.status == "connected"
            port = first.port
            await first.stop()
            await until(lambda: not link.connected.is_set())

            # The device comes back on the same port with another host key: an impostor.
            other_key = asyncssh.generate_private_key("ssh-ed25519")
            impostor = server(port, host_key=other_key)
            await impostor.start()
            try:
                await until(lambda: link.status == "untrusted-host-key", 15)
                assert "dev" in link.reason and f"127.0.0.1:{port}" in link.reason, link.reason
                assert fingerprint(other_key) in link.reason and "changed" in link.reason, link.reason
                assert fingerprint(asyncssh.import_public_key(pinned)) in link.reason
                await asyncio.sleep(1.0)
                assert not link.connected.is_set() and link.client is None
                assert impostor.sessions == {}   # never authenticated, never a session
                with pytest.raises(Exception, match="untrusted|changed"):
                    await link.session(timeout=0.2)
            finally:
                await impostor.stop()

            # The real device again, with its own key: the link connects.
            again = server(port, host_key=first.host_key)
            await again.start()
            try:
                await asyncio.wait_for(link.connected.wait(), BACKOFF_MAX + 10)
                assert link.status == "connected" and link.reason == ""
                assert (await link.session()).session_id is not None
            finally:
                await link.stop()
                await again.stop()
        finally:
            await link.stop()
    asyncio.run(scenario())


def test_a_link_backs_off_on_an_untrusted_key_instead_of_spinning():
    async def scenario():
        device = server()
        await device.start()
        attempts = []
        original = NetconfClient.connect.__func__

        async def counting(cls, *args, **kw):
            attempts.append(1)
            return await original(cls, *args, **kw)
        stranger = public_key_line(asyncssh.generate_private_key("ssh-ed25519"))
        link = DeviceLink(Endpoint("dev", "127.0.0.1", device.port, "admin", "pw", host_key=stranger), ())
        NetconfClient.connect = classmethod(counting)
        try:
            link.start()
            await asyncio.sleep(2.0)
        finally:
            NetconfClient.connect = classmethod(original)
            await link.stop()
            await device.stop()
        assert link.status == "untrusted-host-key"
        assert 1 <= len(attempts) <= 2, f"{len(attempts)} attempts in 2 s"
    asyncio.run(scenario())


def test_an_unknown_key_in_a_known_hosts_file_is_refused_and_a_listed_one_accepted(tmp_path):
    async def scenario():
        device = server()
        await device.start()
        try:
            known = tmp_path / "known_hosts"
            known.write_text(f"[127.0.0.1]:{device.port + 1} {device.public_host_key}\n")  # another port only
            link = DeviceLink(Endpoint("dev", "127.0.0.1", device.port, "admin", "pw", known_hosts=str(known)), ())
            link.start()
            try:
                await until(lambda: link.status == "untrusted-host-key")
                assert "unknown" in link.reason and str(known) in link.reason
                assert fingerprint(device.host_key) in link.reason
                assert device.sessions == {}
            finally:
                await link.stop()

            known.write_text(f"[127.0.0.1]:{device.port} {device.public_host_key}\n")
            link = DeviceLink(Endpoint("dev", "127.0.0.1", device.port, "admin", "pw", known_hosts=str(known)), ())
            link.start()
            try:
                await asyncio.wait_for(link.connected.wait(), 10)
            finally:
                await link.stop()
        finally:
            await device.stop()
    asyncio.run(scenario())


def test_an_endpoint_that_pins_nothing_is_refused():
    endpoint = Endpoint("dev", "127.0.0.1", 830, "admin", "pw")
    with pytest.raises(UnpinnedEndpoint, match="dev.*127.0.0.1:830.*host_key.*known_hosts"):
        DeviceLink(endpoint, ())

    async def one_shot():
        await endpoint.connect()
    with pytest.raises(UnpinnedEndpoint):
        asyncio.run(one_shot())


def test_the_client_names_the_offered_key_of_an_untrusted_server():
    async def scenario():
        device = server()
        await device.start()
        try:
            stranger = public_key_line(asyncssh.generate_private_key("ssh-ed25519"))
            endpoint = Endpoint("dev", "127.0.0.1", device.port, "admin", "pw", host_key=stranger)
            with pytest.raises(UntrustedHostKey) as error:
                await endpoint.connect()
            assert error.value.fingerprint == fingerprint(device.host_key)
            assert f"127.0.0.1:{device.port}" in str(error.value)
            good = Endpoint("dev", "127.0.0.1", device.port, "admin", "pw", host_key=device.public_host_key)
            async with await good.connect() as nc:
                assert nc.session_id is not None
        finally:
            await device.stop()
    asyncio.run(scenario())


def test_a_server_keeps_its_host_key_in_its_datastore_directory(tmp_path):
    first = server(datastore_dir=tmp_path / "ds")
    again = server(datastore_dir=tmp_path / "ds")
    assert first.public_host_key == again.public_host_key
    assert stat.S_IMODE(os.stat(tmp_path / "ds" / HOST_KEY_FILE).st_mode) == 0o600
    assert server().public_host_key != first.public_host_key


def test_a_device_host_and_a_stack_keep_host_key_and_passwords_in_their_state_directory(tmp_path):
    from devices.host import DeviceHost
    from devices.topology import default_topology
    from tools.stack import CREDENTIALS_FILE, stack_passwords

    first = DeviceHost(default_topology(), state_dir=tmp_path / "devices", insecure_sae_header=True)
    again = DeviceHost(default_topology(), state_dir=tmp_path / "devices", insecure_sae_header=True)
    assert first.public_host_key == again.public_host_key
    assert {row.host_key for row in first.table()} == {first.public_host_key}
    assert stat.S_IMODE(os.stat(tmp_path / "devices" / HOST_KEY_FILE).st_mode) == 0o600

    passwords = stack_passwords(tmp_path)
    assert stack_passwords(tmp_path) == passwords and set(passwords) == {"admin", "monitor"}
    assert "admin" not in passwords.values() and len(set(passwords.values())) == 2
    assert stat.S_IMODE(os.stat(tmp_path / CREDENTIALS_FILE).st_mode) == 0o600
    assert stack_passwords(None) != passwords != stack_passwords(tmp_path / "other")
