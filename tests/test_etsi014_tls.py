"""ETSI GS QKD 014 as the standard has it: HTTPS with client certificates, the SAE named by its
certificate. Real parts only: key managers of a real key network behind real aiohttp servers
on 127.0.0.1, certificates from tools/pki.py's local CA, real aiohttp clients and curl.

Key managers A - B - C - D (three hops); SAE sa at A and sd at D share a key session; SAE sc,
attached to A too, has no session with sd."""
import asyncio
import json
import os
import shutil
import stat
import subprocess

import aiohttp
import pytest

from devices.etsi014 import SAE_HEADER, Etsi014Server
from devices.host import DeviceHost
from devices.topology import default_topology
from tools.pki import LocalCA, client_context, curl_command, server_context
from tools.stack import KeyDeliveryPki

from test_etsi014 import ManualTime, key_chain


@pytest.fixture
def kms():
    """The chain of test_etsi014, with a second SAE sc at A that has no session with sd."""
    return key_chain(ManualTime(), saes_at_a=("sa", "sc"))


def serve(kms, ca: LocalCA, test) -> None:
    """Key managers A and D over HTTPS with their certificates of `ca`; run `test(a, d)`
    with their base URLs."""
    async def main():
        async with Etsi014Server(kms["A"], ssl_context=server_context(ca.server("A"))) as a, \
                Etsi014Server(kms["D"], ssl_context=server_context(ca.server("D"))) as d:
            assert a.url.startswith("https://127.0.0.1:") and d.url.startswith("https://127.0.0.1:")
            await test(f"{a.url}/api/v1/keys", f"{d.url}/api/v1/keys")
    asyncio.run(main())


async def call(sae_context, method, url, **kw):
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=sae_context)) as http:
        async with http.request(method, url, **kw) as response:
            return response.status, await response.json()


def test_two_saes_fetch_one_sessions_keys_with_their_own_certificates_and_no_other_sae_can(kms, tmp_path):
    ca = LocalCA(tmp_path / "pki")
    sa, sd, sc = (client_context(ca.client(name)) for name in ("sa", "sd", "sc"))

    async def test(a, d):
        # The master SAE asks its key manager for keys, the slave SAE for the same by key_ID.
        status, body = await call(sa, "GET", f"{a}/sd/enc_keys?number=2&size=256")
        assert status == 200, body
        keys = body["keys"]
        ids = {"key_IDs": [{"key_ID": k["key_ID"]} for k in keys]}

        # SAE sc, with its own valid certificate, asks for the keys of session sa-sd: nothing,
        # at either end, whatever header it sends; the keys stay where they are.
        served, delivered = kms["A"].stats.keys_served, kms["D"].stats.keys_delivered
        stored = kms["D"].stored_key_count
        status, body = await call(sc, "GET", f"{a}/sd/enc_keys", headers={SAE_HEADER: "sa"})
        assert status == 401 and "keys" not in body, body
        status, body = await call(sc, "POST", f"{d}/sa/dec_keys", json=ids, headers={SAE_HEADER: "sd"})
        assert status == 401 and "keys" not in body, body
        status, body = await call(sc, "GET", f"{d}/sa/status")
        assert status == 401, body
        assert (kms["A"].stats.keys_served, kms["D"].stats.keys_delivered) == (served, delivered)
        assert kms["D"].stored_key_count == stored

        status, body = await call(sd, "POST", f"{d}/sa/dec_keys", json=ids)
        assert (status, body) == (200, {"keys": keys})          # the two ends hold the same keys

        status, body = await call(sd, "GET", f"{d}/sa/dec_keys?key_ID={keys[0]['key_ID']}")
        assert status == 400 and "keys" not in body             # once delivered, gone
        assert body["details"][0]["key_ID"] == keys[0]["key_ID"]
    serve(kms, ca, test)


def test_a_client_without_a_certificate_of_the_ca_cannot_connect(kms, tmp_path):
    ca = LocalCA(tmp_path / "pki")
    rogue = LocalCA(tmp_path / "rogue")

    async def test(a, d):
        for context in (client_context(ca_file=ca.ca_file),                  # no certificate at all
                        client_context(rogue.client("sa"), ca_file=ca.ca_file)):  # "sa", from another CA
            with pytest.raises(aiohttp.ClientError):
                await call(context, "GET", f"{a}/sd/enc_keys")
        async with aiohttp.ClientSession() as http:                          # plain HTTP, the header
            with pytest.raises(aiohttp.ClientError):
                async with http.get(f"{a.replace('https:', 'http:')}/sd/enc_keys", headers={SAE_HEADER: "sa"}) as r:
                    await r.read()
    serve(kms, ca, test)
    assert kms["A"].stats.keys_served == 0


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_the_printed_curl_command_works_and_keys_fetched_with_curl_match(kms, tmp_path):
    ca = LocalCA(tmp_path / "pki")

    def curl(sae, url, *extra):
        command = curl_command(ca.client(sae), url).replace("curl ", "curl -sS ", 1)
        result = subprocess.run(command + "".join(f" {e}" for e in extra), shell=True, capture_output=True,
                                text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    async def test(a, d):
        loop = asyncio.get_running_loop()
        status = await loop.run_in_executor(None, curl, "sa", f"{a}/sd/status")
        assert (status["master_SAE_ID"], status["slave_SAE_ID"]) == ("sa", "sd")
        sent = await loop.run_in_executor(None, curl, "sa", f"{a}/sd/enc_keys?number=1")
        key = sent["keys"][0]
        got = await loop.run_in_executor(None, curl, "sd", f"{d}/sa/dec_keys?key_ID={key['key_ID']}")
        assert got == {"keys": [key]}
    serve(kms, ca, test)


def test_the_local_ca_keeps_its_certificates_private_and_reuses_them(tmp_path):
    ca = LocalCA(tmp_path / "pki")
    first = ca.client("sae-quintin")
    again = LocalCA(tmp_path / "pki").client("sae-quintin")
    assert again == first and first.cert_file.read_bytes() == again.cert_file.read_bytes()
    for private in (first.key_file, tmp_path / "pki" / "ca.key"):
        assert stat.S_IMODE(os.stat(private).st_mode) == 0o600
    assert LocalCA(tmp_path / "other").client("sae-quintin").cert_file.read_bytes() != first.cert_file.read_bytes()


def test_the_device_host_serves_https_by_default_and_plain_http_only_when_asked(tmp_path):
    with pytest.raises(ValueError, match="insecure_sae_header"):
        DeviceHost(default_topology(), state_dir=tmp_path / "refused")
    pki = KeyDeliveryPki(tmp_path / "pki")
    with pytest.raises(ValueError, match="km_peer_tls"):   # the key managers' own certificates are needed too
        DeviceHost(default_topology(), state_dir=tmp_path / "refused", etsi014_tls=pki.server_tls)

    async def main():
        async with DeviceHost(default_topology(), state_dir=tmp_path / "devices", etsi014_tls=pki.server_tls,
                              km_peer_tls=pki.km_peer_tls) as host:
            urls = {row.id: row.etsi014_url for row in host.table() if row.etsi014_url}
            assert urls and all(url.startswith("https://127.0.0.1:") for url in urls.values())
            status, body = await call(client_context(pki.sae("sae-quintin")), "GET",
                                      f"{urls['km-quintin']}/api/v1/keys/sae-distrito/status")
            # the key manager knows who calls from the certificate: no session yet (no intent)
            assert (status, body["message"]) == (401, "SAE sae-quintin has no key session with SAE sae-distrito")
            with pytest.raises(aiohttp.ClientError):
                await call(client_context(ca_file=pki.ca.ca_file), "GET",
                           f"{urls['km-quintin']}/api/v1/keys/sae-distrito/status")
    asyncio.run(main())
