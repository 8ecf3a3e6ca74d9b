"""A local certificate authority for one stack: the certificates of ETSI GS QKD 014 over TLS.

    ca = LocalCA(state_dir / "pki")             # made the first time, loaded after
    km = ca.server("km-quintin")                # a key manager: TLS server (and client, for KM-to-KM)
    sae = ca.client("sae-alice")                # an SAE: client certificate, CN = its SAE_ID
    server_context(km)                          # ssl.SSLContext requiring a client certificate of the CA
    client_context(sae)                         # ssl.SSLContext presenting sae's certificate, trusting the CA

Every certificate is ECDSA P-256, signed by the CA, its subject common name the name given
(the SAE_ID of an SAE: ETSI 014 names the caller by its certificate, devices/etsi014.py).
A server certificate names 127.0.0.1 and localhost (and the `hosts` given) as subject
alternative names and may also be used as a client certificate (mutual TLS between key
managers). Files, in the CA's directory:

    ca.pem, ca.key                the CA (key mode 0600)
    <name>.pem, <name>.key        each certificate and its private key (key mode 0600)

A certificate already on disk, signed by this CA, not expiring within a day and of the same
kind and hosts, is reused: a restart on the same state directory keeps every certificate, so
SAEs configured with them keep working. Names are used as file names after replacing
anything but letters, digits, '.', '_' and '-' by '_'.
"""
from __future__ import annotations

import datetime
import ipaddress
import os
import pathlib
import re
import ssl
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_NAME = "qstrata local CA"
CA_DAYS = 3650
CERT_DAYS = 825
DEFAULT_HOSTS = ("127.0.0.1", "localhost")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class Credential:
    """A certificate issued by the local CA: its files, and the CA file to trust peers with."""

    name: str                # the subject common name (an SAE_ID for an SAE)
    cert_file: pathlib.Path
    key_file: pathlib.Path
    ca_file: pathlib.Path

    def ssl_files(self) -> tuple[str, str, str]:
        """(certificate, key, CA) paths, as devices.etsi014.server_ssl_context takes them."""
        return str(self.cert_file), str(self.key_file), str(self.ca_file)


class LocalCA:
    """The CA kept in `directory` (made with mode 0700 when missing)."""

    def __init__(self, directory: pathlib.Path | str, name: str = CA_NAME) -> None:
        self.directory = pathlib.Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.ca_file = self.directory / "ca.pem"
        key_file = self.directory / "ca.key"
        if self.ca_file.exists() and key_file.exists():
            self._key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
            self._cert = x509.load_pem_x509_certificate(self.ca_file.read_bytes())
        else:
            self._key = ec.generate_private_key(ec.SECP256R1())
            subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
            now = _now()
            self._cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                          .public_key(self._key.public_key()).serial_number(x509.random_serial_number())
                          .not_valid_before(now - datetime.timedelta(minutes=5))
                          .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
                          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                                       key_encipherment=False, data_encipherment=False,
                                                       key_agreement=False, key_cert_sign=True, crl_sign=True,
                                                       encipher_only=False, decipher_only=False), critical=True)
                          .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()),
                                         critical=False)
                          .sign(self._key, hashes.SHA256()))
            _write_key(key_file, self._key)
            _write(self.ca_file, self._cert.public_bytes(serialization.Encoding.PEM), 0o644)

    def server(self, name: str, hosts: tuple[str, ...] = ()) -> Credential:
        """A TLS server certificate for `name`, valid for 127.0.0.1, localhost and `hosts`
        (IP addresses or DNS names); also usable as a client certificate."""
        return self._issue(name, server=True, hosts=tuple(dict.fromkeys((*DEFAULT_HOSTS, *hosts))))

    def client(self, name: str) -> Credential:
        """A TLS client certificate whose common name is `name` (an SAE_ID)."""
        return self._issue(name, server=False, hosts=())

    def _issue(self, name: str, server: bool, hosts: tuple[str, ...]) -> Credential:
        if not name:
            raise ValueError("a certificate needs a common name")
        stem = _UNSAFE.sub("_", name)
        credential = Credential(name, self.directory / f"{stem}.pem", self.directory / f"{stem}.key", self.ca_file)
        if self._reusable(credential, server, hosts):
            return credential
        key = ec.generate_private_key(ec.SECP256R1())
        usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH] if server \
            else [ExtendedKeyUsageOID.CLIENT_AUTH]
        now = _now()
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                   .issuer_name(self._cert.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                                  critical=False))
        if hosts:
            builder = builder.add_extension(x509.SubjectAlternativeName([_general_name(h) for h in hosts]),
                                            critical=False)
        certificate = builder.sign(self._key, hashes.SHA256())
        _write_key(credential.key_file, key)
        _write(credential.cert_file, certificate.public_bytes(serialization.Encoding.PEM), 0o644)
        return credential

    def _reusable(self, credential: Credential, server: bool, hosts: tuple[str, ...]) -> bool:
        if not (credential.cert_file.exists() and credential.key_file.exists()):
            return False
        try:
            certificate = x509.load_pem_x509_certificate(credential.cert_file.read_bytes())
            certificate.verify_directly_issued_by(self._cert)
            usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
            try:
                names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                present = {str(n.value) for n in names}
            except x509.ExtensionNotFound:
                present = set()
        except (ValueError, TypeError, x509.ExtensionNotFound):
            return False
        return (certificate.not_valid_after_utc > _now() + datetime.timedelta(days=1)
                and (ExtendedKeyUsageOID.SERVER_AUTH in usages) == server
                and set(hosts) <= present)


def server_context(credential: Credential) -> ssl.SSLContext:
    """TLS >= 1.2 serving `credential`, requiring a client certificate signed by its CA."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(credential.ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(str(credential.cert_file), str(credential.key_file))
    return context


def client_context(credential: Credential | None = None, ca_file: pathlib.Path | str | None = None) -> ssl.SSLContext:
    """TLS >= 1.2 trusting the CA (of `credential`, or `ca_file`), presenting `credential`'s
    certificate when given (an SAE calling its key manager)."""
    trusted = ca_file if ca_file is not None else (credential.ca_file if credential else None)
    if trusted is None:
        raise ValueError("give a credential or the CA file to trust")
    context = ssl.create_default_context(cafile=str(trusted))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if credential is not None:
        context.load_cert_chain(str(credential.cert_file), str(credential.key_file))
    return context


def curl_command(credential: Credential, url: str) -> str:
    """A curl command line calling `url` as the SAE of `credential`."""
    return (f"curl --cacert {credential.ca_file} --cert {credential.cert_file} --key {credential.key_file} "
            f"'{url}'")


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _write_key(path: pathlib.Path, key: ec.EllipticCurvePrivateKey) -> None:
    _write(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()), 0o600)


def _write(path: pathlib.Path, data: bytes, mode: int) -> None:
    """Atomically, with `mode` from the start (a private key is never readable by others)."""
    scratch = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(descriptor, "wb") as out:
        out.write(data)
    os.chmod(scratch, mode)
    os.replace(scratch, path)
