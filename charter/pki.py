"""Charter's own certificate authority, for mutual TLS between its parts (cryptography): the
media daemons' API accepts only the controller, the registry only daemons, each proving
itself with a certificate this CA signed. Nothing here faces browsers or API clients.

A TLS directory holds `ca.pem` (the CA's certificate, which every part trusts), `ca-key.pem`
on the machine that issues (the controller's, 0600), and per part `NAME.pem` and
`NAME-key.pem` (0600). The certificate of a part names it (common name = the daemon id, or
"charter-controller") and is valid for the addresses it is reached at (SANs), both as a
server and as a client. `charter up` makes all of it on first start; `charter cert` issues
one for a daemon on another machine."""
from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CONTROLLER = "charter-controller"
"""The common name of the controller's certificate (what a daemon's API accepts)."""
CA_DAYS = 3650
PART_DAYS = 825


@dataclass(frozen=True)
class Identity:
    """What a part presents and trusts: PEM bytes."""

    ca: bytes
    cert: bytes
    key: bytes


def _write(path: Path, data: bytes, private: bool = False) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(descriptor, "wb") as f:
        f.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def ensure_ca(directory: Path) -> None:
    """Make the CA in `directory` unless it is there."""
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / "ca.pem").exists():
        return
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Charter CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    _write(directory / "ca-key.pem", _key_pem(key), private=True)
    _write(directory / "ca.pem", cert.public_bytes(serialization.Encoding.PEM))


def issue(directory: Path, name: str, hosts: list[str]) -> Identity:
    """The identity of part `name` in `directory`; made there, signed by the CA there, if
    it has none."""
    existing = load(directory, name)
    if existing is not None and (name != CONTROLLER or _names_itself(existing)):
        return existing
    return issue_into(directory, directory, name, hosts)


def _names_itself(identity: Identity) -> bool:
    """Whether the certificate carries the controller's own name (those issued before it
    did are issued again: daemons of several controllers check it)."""
    cert = x509.load_pem_x509_certificate(identity.cert)
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    return CONTROLLER in names.get_values_for_type(x509.DNSName)


def issue_into(ca_directory: Path, out: Path, name: str, hosts: list[str]) -> Identity:
    """A new certificate for part `name`, reached at `hosts` (IP addresses or DNS names),
    signed by the CA in `ca_directory` (which must hold ca-key.pem); written to `out` as
    NAME.pem and NAME-key.pem beside a copy of ca.pem."""
    ca_pem = (ca_directory / "ca.pem").read_bytes()
    ca_key = serialization.load_pem_private_key((ca_directory / "ca-key.pem").read_bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate(ca_pem)
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    # The controller's name too: a daemon that knows several controllers checks that name
    # (mediad/registration.py), whichever address it reached.
    also = [CONTROLLER] if name == CONTROLLER else []
    for host in dict.fromkeys([*hosts, *also, "127.0.0.1", "localhost"]):
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=PART_DAYS))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    out.mkdir(parents=True, exist_ok=True)
    if out != ca_directory:
        _write(out / "ca.pem", ca_pem)
    _write(out / f"{name}-key.pem", _key_pem(key), private=True)
    _write(out / f"{name}.pem", cert.public_bytes(serialization.Encoding.PEM))
    identity = load(out, name)
    assert identity is not None
    return identity


def load(directory: Path, name: str) -> Identity | None:
    """The identity of part `name` in `directory`, or None if it has none there."""
    paths = [directory / "ca.pem", directory / f"{name}.pem", directory / f"{name}-key.pem"]
    if not all(p.exists() for p in paths):
        return None
    ca, cert, key = (p.read_bytes() for p in paths)
    return Identity(ca, cert, key)


def require(directory: Path, name: str) -> Identity:
    """The identity of part `name`, or SystemExit saying how to get one."""
    identity = load(directory, name)
    if identity is None:
        raise SystemExit(f"no certificate for {name!r} in {directory} (ca.pem, {name}.pem, {name}-key.pem): on the "
                         f"controller's machine run `charter cert --name {name} --host ADDRESS --out DIR` and copy "
                         f"DIR here, or run with --tls none")
    return identity


def server_credentials(identity: Identity) -> grpc.ServerCredentials:
    """TLS that asks every client for a certificate of this CA."""
    return grpc.ssl_server_credentials([(identity.key, identity.cert)], root_certificates=identity.ca,
                                       require_client_auth=True)


def channel_credentials(identity: Identity) -> grpc.ChannelCredentials:
    """TLS that presents this identity and trusts only servers of this CA."""
    return grpc.ssl_channel_credentials(root_certificates=identity.ca, private_key=identity.key,
                                        certificate_chain=identity.cert)


def peer_name(context: Any) -> str:
    """The common name of the certificate the peer of a call presented ("" over plaintext)."""
    names = (context.auth_context() or {}).get("x509_common_name") or [b""]
    name = names[0]
    return name.decode() if isinstance(name, bytes) else str(name)


class PeerCheck(grpc.aio.ServerInterceptor):
    """Lets the methods under `prefix` be called only by peers whose certificate names one of
    `allowed` (PERMISSION_DENIED otherwise); the TLS handshake has checked the CA already."""

    def __init__(self, prefix: str, allowed: set[str]) -> None:
        self.prefix = prefix
        self.allowed = allowed

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = await continuation(details)
        if handler is None or not details.method.startswith(self.prefix):
            return handler
        allowed = self.allowed

        async def check(context: Any) -> None:
            name = peer_name(context)
            if name not in allowed:
                await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                    f"{name or 'a peer without a certificate'} may not call {details.method}")

        if handler.unary_unary is not None:
            behaviour = handler.unary_unary

            async def unary(request: Any, context: Any) -> Any:
                await check(context)
                return await behaviour(request, context)

            return grpc.unary_unary_rpc_method_handler(unary, request_deserializer=handler.request_deserializer,
                                                       response_serializer=handler.response_serializer)
        if handler.unary_stream is not None:
            streaming = handler.unary_stream

            async def stream(request: Any, context: Any) -> Any:
                await check(context)
                async for message in streaming(request, context):
                    yield message

            return grpc.unary_stream_rpc_method_handler(stream, request_deserializer=handler.request_deserializer,
                                                        response_serializer=handler.response_serializer)
        return handler
