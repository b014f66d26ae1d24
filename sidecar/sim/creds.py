"""Credentials for the simulator: a private CA and everything it signs.

One call writes a complete, self-consistent set into a folder: the CA the
sidecar trusts (``tls_ca_file``), the simulator's server certificate, an APNs
token-auth key (``AuthKey_<KEYID>.p8``), an APNs client certificate (whose
subject UID is the bundle id, like Apple's) and a Google service-account
JSON.  ``creds.json`` lists them so the simulator and the command line can
load the set again.  The service account's ``token_uri`` names the port the
simulator listens on, which is only known once it serves; hence
:func:`write_service_account`.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import json
import secrets
import string
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

MANIFEST = "creds.json"
DEFAULT_TOKEN_BUNDLE_ID = "com.example.sylk"
DEFAULT_CERT_BUNDLE_ID = "com.example.linphone"
DEFAULT_PROJECT_ID = "sim-project"
_ALNUM = string.ascii_uppercase + string.digits


@dataclasses.dataclass(frozen=True, slots=True)
class SimCredentials:
    """Where a generated credential set lives; all paths are absolute."""

    folder: Path
    ca_file: Path
    server_cert: Path
    server_key: Path
    apns_key_file: Path
    key_id: str
    team_id: str
    token_bundle_id: str
    client_cert: Path
    client_key: Path
    cert_bundle_id: str
    service_account_file: Path
    project_id: str
    client_email: str
    private_key_id: str

    def apns_public_key_pem(self) -> bytes:
        """The public half of the .p8 key, which the simulator verifies with."""
        key = serialization.load_pem_private_key(self.apns_key_file.read_bytes(), None)
        return key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def service_account(self) -> dict[str, Any]:
        return json.loads(self.service_account_file.read_text())


def generate_credentials(
    folder: str | Path,
    *,
    token_bundle_id: str = DEFAULT_TOKEN_BUNDLE_ID,
    cert_bundle_id: str = DEFAULT_CERT_BUNDLE_ID,
    project_id: str = DEFAULT_PROJECT_ID,
    port: int = 443,
    server_names: tuple[str, ...] = (),
) -> SimCredentials:
    """Write a fresh credential set into ``folder`` (created if missing).

    Args:
        folder: where to write; existing files of a previous set are replaced.
        token_bundle_id: the bundle id recorded for the token-auth app.
        cert_bundle_id: the subject UID of the APNs client certificate.
        project_id: the Firebase project of the service account.
        port: the port written into the service account's ``token_uri``.
        server_names: more host names or IP addresses the server certificate
            is valid for (a benchmark points Apple's host names at the simulator).

    Returns:
        The set, as :func:`load_credentials` would read it back.
    """
    folder = Path(folder).absolute()
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pushsidecar simulator CA")])
    ca_cert = (
        _builder(ca_name, ca_name, ca_key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write(folder / "ca.pem", ca_cert.public_bytes(serialization.Encoding.PEM))

    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        _builder(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]),
            ca_name, server_key.public_key(), now, issuer_key=ca_key,
        )
        .add_extension(
            x509.SubjectAlternativeName([
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.IPAddress(ipaddress.ip_address("::1")),
                *(_general_name(name) for name in server_names),
            ]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write(folder / "server.pem", server_cert.public_bytes(serialization.Encoding.PEM))
    _write(folder / "server-key.pem", _pem_private(server_key), secret=True)

    # Apple's .p8: a P-256 key in PKCS#8 PEM, named after its 10-character key id.
    key_id = _random_id()
    team_id = _random_id()
    apns_key = ec.generate_private_key(ec.SECP256R1())
    apns_key_file = folder / f"AuthKey_{key_id}.p8"
    _write(apns_key_file, _pem_private(apns_key), secret=True)

    # Apple's push certificates carry the bundle id as subject UID.
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_cert = (
        _builder(
            x509.Name([
                x509.NameAttribute(NameOID.USER_ID, cert_bundle_id),
                x509.NameAttribute(NameOID.COMMON_NAME, f"Apple Push Services: {cert_bundle_id}"),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, team_id),
            ]),
            ca_name, client_key.public_key(), now, issuer_key=ca_key,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write(folder / "apns-client.pem", client_cert.public_bytes(serialization.Encoding.PEM))
    _write(folder / "apns-client-key.pem", _pem_private(client_key), secret=True)

    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_key_id = secrets.token_hex(20)
    client_email = f"firebase-adminsdk@{project_id}.iam.gserviceaccount.com"
    service_account = {
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": private_key_id,
        "private_key": _pem_private(sa_key).decode(),
        "client_email": client_email,
        "client_id": str(secrets.randbelow(10**20)),
        "auth_uri": "https://127.0.0.1/auth",
        "token_uri": token_uri(port),
    }
    sa_file = folder / "service-account.json"
    _write(sa_file, json.dumps(service_account, indent=2).encode(), secret=True)

    manifest = {
        "ca_file": "ca.pem",
        "server_cert": "server.pem",
        "server_key": "server-key.pem",
        "apns": {"key_file": apns_key_file.name, "key_id": key_id, "team_id": team_id,
                 "bundle_id": token_bundle_id},
        "apns_certificate": {"cert_file": "apns-client.pem", "key_file": "apns-client-key.pem",
                             "bundle_id": cert_bundle_id},
        "firebase": {"service_account_file": sa_file.name, "project_id": project_id,
                     "client_email": client_email, "private_key_id": private_key_id},
    }
    _write(folder / MANIFEST, json.dumps(manifest, indent=2).encode())
    return load_credentials(folder)


def load_credentials(folder: str | Path) -> SimCredentials:
    """Read back a set written by :func:`generate_credentials`.

    Raises:
        FileNotFoundError: ``folder`` holds no ``creds.json``.
    """
    folder = Path(folder).absolute()
    manifest = json.loads((folder / MANIFEST).read_text())
    apns, cert, fcm = manifest["apns"], manifest["apns_certificate"], manifest["firebase"]
    return SimCredentials(
        folder=folder,
        ca_file=folder / manifest["ca_file"],
        server_cert=folder / manifest["server_cert"],
        server_key=folder / manifest["server_key"],
        apns_key_file=folder / apns["key_file"],
        key_id=apns["key_id"],
        team_id=apns["team_id"],
        token_bundle_id=apns["bundle_id"],
        client_cert=folder / cert["cert_file"],
        client_key=folder / cert["key_file"],
        cert_bundle_id=cert["bundle_id"],
        service_account_file=folder / fcm["service_account_file"],
        project_id=fcm["project_id"],
        client_email=fcm["client_email"],
        private_key_id=fcm["private_key_id"],
    )


def ensure_credentials(folder: str | Path) -> SimCredentials:
    """Load the set in ``folder``, generating one first if there is none."""
    if (Path(folder) / MANIFEST).exists():
        return load_credentials(folder)
    return generate_credentials(folder)


def token_uri(port: int, host: str = "127.0.0.1") -> str:
    """The OAuth token endpoint of a simulator listening on ``host:port``."""
    return f"https://{host}:{port}/token"


def write_service_account(creds: SimCredentials, port: int, host: str = "127.0.0.1") -> None:
    """Point the service account's ``token_uri`` at a simulator on ``port``."""
    info = creds.service_account()
    info["token_uri"] = token_uri(port, host)
    _write(creds.service_account_file, json.dumps(info, indent=2).encode(), secret=True)


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _builder(subject, issuer, public_key, now, issuer_key=None) -> x509.CertificateBuilder:
    signer_public = (issuer_key or None) and issuer_key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    if signer_public is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_public), critical=False
        )
    return builder


def _pem_private(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _random_id() -> str:
    return "".join(secrets.choice(_ALNUM) for _ in range(10))


def _write(path: Path, data: bytes, *, secret: bool = False) -> None:
    path.write_bytes(data)
    if secret:
        path.chmod(0o600)
