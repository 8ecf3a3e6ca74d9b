"""ETSI GS QKD 014 over real HTTP: a real aiohttp server on 127.0.0.1, a real aiohttp client."""
import asyncio
import base64
import datetime
import ipaddress
import ssl

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from devices.etsi014 import SAE_HEADER, Etsi014Server, server_ssl_context
from devices.keystore import KeyManager, KeyNetwork
from devices.twin import Clock

STATUS_FIELDS = {"source_KME_ID", "target_KME_ID", "master_SAE_ID", "slave_SAE_ID", "key_size",
                 "stored_key_count", "max_key_count", "max_key_per_request", "max_key_size",
                 "min_key_size", "max_SAE_ID_count"}


class ManualTime:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def time():
    return ManualTime()


@pytest.fixture
def kms(time):
    """A - B - C - D (three hops, 100,000 bits on each link); SAE sa at A, sd at D; a session
    sa -> sd with a burst of 4096 bits."""
    network = KeyNetwork(Clock(source=time))
    kms = {name: KeyManager(name, network) for name in "ABCD"}
    for link, (x, y) in {"ab": ("A", "B"), "bc": ("B", "C"), "cd": ("C", "D")}.items():
        kms[x].add_link(link, y)
        kms[y].add_link(link, x)
        network.stream(link).set_rate(100_000.0)
    kms["A"].set_route("D", "B", "ab")
    kms["B"].set_route("D", "C", "bc")
    kms["C"].set_route("D", "D", "cd")
    kms["A"].attach_sae("sa")
    kms["D"].attach_sae("sd")
    kms["A"].open_session("sa", "sd", rate_bps=1000.0, burst_bits=4096)
    time.t += 1.0
    return kms


def scenario(kms, test, ssl_context=None, client_ssl=None):
    """Serve A and D over HTTP (or A over HTTPS), run `test(a_url, d_url, http)`, stop."""
    async def main():
        async with Etsi014Server(kms["A"], ssl_context=ssl_context) as a, Etsi014Server(kms["D"]) as d:
            connector = aiohttp.TCPConnector(ssl=client_ssl) if client_ssl else None
            async with aiohttp.ClientSession(connector=connector) as http:
                await test(f"{a.url}/api/v1/keys", f"{d.url}/api/v1/keys", http)
    asyncio.run(main())


async def call(http, method, url, sae=None, headers=None, **kw):
    headers = {**(headers or {}), **({SAE_HEADER: sae} if sae else {})}
    async with http.request(method, url, headers=headers, **kw) as response:
        return response.status, await response.json()


def test_servers_listen_on_loopback_ports_of_their_own(kms):
    async def main():
        async with Etsi014Server(kms["A"]) as a, Etsi014Server(kms["D"]) as d:
            assert a.url.startswith("http://127.0.0.1:") and a.port != d.port and a.port > 0
    asyncio.run(main())


def test_keys_fetched_at_both_ends_match_across_three_hops_and_are_served_once(kms):
    async def test(a, d, http):
        status, body = await call(http, "GET", f"{a}/sd/enc_keys?number=2&size=512", "sa")
        assert status == 200
        keys = body["keys"]
        assert len(keys) == 2 and all(len(base64.b64decode(k["key"])) == 64 for k in keys)

        status, body = await call(http, "POST", f"{d}/sa/dec_keys", "sd",
                                  json={"key_IDs": [{"key_ID": k["key_ID"]} for k in keys]})
        assert (status, body) == (200, {"keys": keys})

        status, body = await call(http, "GET", f"{d}/sa/dec_keys?key_ID={keys[0]['key_ID']}", "sd")
        assert status == 400
        assert body["message"].startswith("1 of 1 key_IDs cannot be delivered")
        assert body["details"][0]["key_ID"] == keys[0]["key_ID"]

        status, body = await call(http, "POST", f"{a}/sd/enc_keys", "sa", json={"number": 1, "size": 256})
        assert status == 200
        key = body["keys"][0]
        status, body = await call(http, "GET", f"{d}/sa/dec_keys?key_ID={key['key_ID']}", "sd")
        assert (status, body) == (200, {"keys": [key]})
    scenario(kms, test)
    assert [kms[x].pools[link].consumed_bits for x, link in (("A", "ab"), ("B", "bc"), ("D", "cd"))] == [1280] * 3


def test_status_has_the_standard_fields(kms):
    async def test(a, d, http):
        status, body = await call(http, "GET", f"{a}/sd/status", "sa")
        assert status == 200 and set(body) == STATUS_FIELDS
        assert (body["source_KME_ID"], body["target_KME_ID"]) == ("A", "D")
        assert (body["master_SAE_ID"], body["slave_SAE_ID"]) == ("sa", "sd")
        assert (body["key_size"], body["stored_key_count"], body["max_key_count"]) == (256, 16, 16)
    scenario(kms, test)


def test_exceeding_the_session_bucket_is_503(kms, time):
    async def test(a, d, http):
        assert (await call(http, "GET", f"{a}/sd/enc_keys?number=16", "sa"))[0] == 200
        status, body = await call(http, "GET", f"{a}/sd/enc_keys", "sa")
        assert status == 503
        assert body["message"].startswith("session rate exceeded: 0 bits left in the bucket, 256 requested")
        time.t += 0.3
        assert (await call(http, "GET", f"{a}/sd/enc_keys", "sa"))[0] == 200
    scenario(kms, test)


def test_empty_pool_is_503_and_consumes_nothing(kms):
    kms["C"].flush("cd")
    tails = [p.tail for km in kms.values() for p in km.pools.values()]

    async def test(a, d, http):
        status, body = await call(http, "GET", f"{a}/sd/enc_keys", "sa")
        assert status == 503
        assert body == {"message": "not enough key on link cd (C -> D): 0 bits, 256 needed",
                        "details": [{"link": "cd", "available_bits": 0, "needed_bits": 256}]}
    scenario(kms, test)
    assert [p.tail for km in kms.values() for p in km.pools.values()] == tails
    assert kms["A"].sessions[("sa", "sd")].bucket.available() == 4096


@pytest.mark.parametrize("method, path, kw, message", [
    ("GET", "A/sd/enc_keys?number=two", {}, "number must be an integer, got 'two'"),
    ("GET", "A/sd/enc_keys?size=100", {}, "size must be a multiple of 8 from 64 to 8192 bits, got 100"),
    ("GET", "A/sd/enc_keys?number=500", {}, "number must be an integer from 1 to 128, got 500"),
    ("POST", "A/sd/enc_keys", {"data": "{not json", "headers": {"Content-Type": "application/json"}},
     "request body is not JSON"),
    ("POST", "A/sd/enc_keys", {"json": [1]}, "request body must be a JSON object"),
    ("POST", "A/sd/enc_keys", {"json": {"nmber": 1}}, "unknown field(s) nmber"),
    ("POST", "A/sd/enc_keys", {"json": {"number": "1"}}, "number must be an integer from 1 to 128, got '1'"),
    ("POST", "A/sd/enc_keys", {"json": {"additional_slave_SAE_IDs": ["sx"]}},
     "additional_slave_SAE_IDs is not supported"),
    ("POST", "A/sd/enc_keys", {"json": {"extension_mandatory": [{"x": 1}]}}, "extension_mandatory is not supported"),
    ("GET", "D/sa/dec_keys", {}, "no key_ID given"),
    ("GET", "D/sa/dec_keys?key_ID=42", {}, "key_ID must be a UUID, got '42'"),
    ("POST", "D/sa/dec_keys", {"json": {"key_IDs": "abc"}}, "key_IDs must be a list of objects with a key_ID"),
    ("POST", "D/sa/dec_keys", {"json": {"key_IDs": [{"key_id": "x"}]}}, "key_ID must be a UUID, got None"),
])
def test_bad_parameters_are_400_with_a_precise_message(kms, method, path, kw, message):
    async def test(a, d, http):
        server, rest = path.split("/", 1)
        sae = "sa" if server == "A" else "sd"
        status, body = await call(http, method, f"{a if server == 'A' else d}/{rest}", sae, **kw)
        assert status == 400
        assert body["message"].startswith(message) and isinstance(body["details"], list)
    scenario(kms, test)


@pytest.mark.parametrize("sae, slave, message", [
    (None, "sd", "no SAE identity: send the X-SAE-ID header (or use TLS client certificates)"),
    ("intruder", "sd", "SAE intruder is not served by key manager A"),
    ("sa", "nobody", "SAE sa has no key session with SAE nobody"),
])
def test_unknown_callers_are_401(kms, sae, slave, message):
    async def test(a, d, http):
        for what in ("enc_keys", "status"):
            status, body = await call(http, "GET", f"{a}/{slave}/{what}", sae)
            assert (status, body["message"]) == (401, message)
    scenario(kms, test)


# -- TLS with client certificates ------------------------------------------------------------

def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _certificate(subject: str, issuer_name: str, issuer_key, public_key, ca: bool = False,
                 ip: str | None = None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer_name))
               .public_key(public_key).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ip:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
                                        critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


class PKI:
    """A CA, the key manager's server certificate and client certificates named after SAEs."""

    def __init__(self, directory):
        self.directory = directory
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        self.ca_file = self._write("ca.pem", _certificate("test-ca", "test-ca", self.ca_key,
                                                          self.ca_key.public_key(), ca=True))
        self.server = self.issue("A", ip="127.0.0.1")

    def _write(self, name, certificate, key=None):
        (self.directory / name).write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        if key is not None:
            (self.directory / f"{name}.key").write_bytes(key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        return str(self.directory / name)

    def issue(self, cn, ip=None, signer=None, signer_name="test-ca"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _certificate(cn, signer_name, signer or self.ca_key, key.public_key(), ip=ip)
        path = self._write(f"{cn}-{signer_name}.pem", cert, key)
        return path, f"{path}.key"

    def client_context(self, cert=None):
        context = ssl.create_default_context(cafile=self.ca_file)
        if cert:
            context.load_cert_chain(*cert)
        return context


@pytest.fixture
def pki(tmp_path):
    return PKI(tmp_path)


def test_tls_names_the_sae_by_its_client_certificate(kms, pki):
    server_context = server_ssl_context(*pki.server, pki.ca_file)

    async def test(a, d, http):
        assert a.startswith("https://127.0.0.1:")
        status, body = await call(http, "GET", f"{a}/sd/enc_keys", "intruder")  # the header is not trusted
        assert status == 200
        status, body = await call(http, "POST", f"{d}/sa/dec_keys", "sd",
                                  json={"key_IDs": [{"key_ID": body["keys"][0]["key_ID"]}]})
        assert status == 200
    scenario(kms, test, server_context, pki.client_context(pki.issue("sa")))

    async def intruder(a, d, http):
        status, body = await call(http, "GET", f"{a}/sd/enc_keys", "sa")
        assert (status, body["message"]) == (401, "SAE intruder is not served by key manager A")
    scenario(kms, intruder, server_context, pki.client_context(pki.issue("intruder")))


def test_tls_refuses_clients_without_a_certificate_from_the_ca(kms, pki):
    server_context = server_ssl_context(*pki.server, pki.ca_file)
    rogue_ca = ec.generate_private_key(ec.SECP256R1())

    for client in (pki.client_context(), pki.client_context(pki.issue("sa", signer=rogue_ca, signer_name="rogue"))):
        async def refused(a, d, http):
            with pytest.raises(aiohttp.ClientError):
                await call(http, "GET", f"{a}/sd/enc_keys")
        scenario(kms, refused, server_context, client)
    assert kms["A"].stats.keys_served == 0
