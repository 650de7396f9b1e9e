"""HTTPS/WSS on the API port: an operator's certificate, or a self-signed one.

Browsers only grant microphone access (getUserMedia) in a secure context, so
the web client needs HTTPS as soon as it is opened from anywhere but
localhost. `--tls-self-signed` generates a certificate once into the data dir
and reuses it on every start, so the exception a user accepted in the browser
stays valid; it is regenerated only when it is unreadable or about to expire.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import logging
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from callsctl_sfu.datadir import tighten_mode
from callsctl_sfu.errors import CallsctlError

if TYPE_CHECKING:  # cryptography (about 9 MB) is imported where a certificate is made or read
    from cryptography import x509

log = logging.getLogger("callsctl_sfu.tls")

SELF_SIGNED_DIR = "tls"
CERT_FILE = "self-signed.crt"
KEY_FILE = "self-signed.key"
VALID_DAYS = 397  # the longest validity browsers accept for a leaf certificate
RENEW_BEFORE = datetime.timedelta(days=14)


class TlsError(CallsctlError, RuntimeError):
    """TLS cannot be set up; the message names the file and the fix."""
    code = "tls_unusable"


@dataclass(frozen=True)
class TlsMaterial:
    cert_path: Path
    key_path: Path
    fingerprint_sha256: str
    self_signed: bool


def _names(extra_hosts: list[str]) -> list[x509.GeneralName]:
    """SANs: loopback, this host's name, and the addresses clients will use."""
    from cryptography import x509
    dns: list[str] = ["localhost"]
    ips: list[str] = ["127.0.0.1", "::1"]
    for host in [socket.gethostname(), *extra_hosts]:
        if not host or host in ("0.0.0.0", "::"):
            continue
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if host not in dns:
                dns.append(host)
        else:
            if host not in ips:
                ips.append(host)
    return ([x509.DNSName(name) for name in dns]
            + [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips])


def generate_self_signed(cert_path: Path, key_path: Path, hosts: list[str]) -> None:
    """Write a new EC P-256 certificate and key (key 0600)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "callsctl serve (self-signed)")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(_names(hosts)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_bytes = key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
    # The key is created 0600 from the start, never world-readable for an instant;
    # an old key file being replaced keeps its mode through O_TRUNC, so set it too.
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key_bytes)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _still_good(cert_path: Path, key_path: Path) -> bool:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return False
    if cert.public_key().public_numbers() != key.public_key().public_numbers():  # type: ignore[union-attr]
        return False
    return cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC) > RENEW_BEFORE


def ensure_self_signed(data_dir: str | os.PathLike[str], hosts: list[str]) -> tuple[Path, Path]:
    """Reuse the data dir's self-signed certificate, or make one if absent or expiring."""
    directory = Path(data_dir).expanduser() / SELF_SIGNED_DIR
    cert_path, key_path = directory / CERT_FILE, directory / KEY_FILE
    if cert_path.exists() and key_path.exists() and _still_good(cert_path, key_path):
        return cert_path, key_path
    try:
        generate_self_signed(cert_path, key_path, hosts)
    except OSError as exc:
        raise TlsError(f"cannot write the self-signed certificate into {directory}: "
                       f"{exc.strerror}; choose a writable --data-dir") from None
    log.info("generated a self-signed TLS certificate in %s", directory)
    return cert_path, key_path


def fingerprint(cert_path: Path) -> str:
    """SHA-256 of the DER certificate, colon-separated, as browsers display it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def resolve_tls(tls_cert: str, tls_key: str, self_signed: bool, data_dir: str,
                hosts: list[str]) -> TlsMaterial | None:
    """Which certificate to serve, from the settings; None for plain HTTP."""
    if self_signed and (tls_cert or tls_key):
        raise TlsError("tls_self_signed and tls_cert/tls_key exclude each other: give either "
                       "--tls-self-signed or --tls-cert with --tls-key")
    if bool(tls_cert) != bool(tls_key):
        missing = "tls_key (--tls-key)" if tls_cert else "tls_cert (--tls-cert)"
        raise TlsError(f"TLS needs both a certificate and its key: {missing} is not set")
    if self_signed:
        cert_path, key_path = ensure_self_signed(data_dir, hosts)
    elif tls_cert:
        cert_path, key_path = Path(tls_cert).expanduser(), Path(tls_key).expanduser()
    else:
        return None
    tighten_mode(key_path, "TLS key")
    try:
        stamp = fingerprint(cert_path)
    except OSError as exc:
        raise TlsError(f"cannot read TLS certificate {cert_path}: {exc.strerror}") from None
    except ValueError:
        raise TlsError(f"TLS certificate {cert_path} is not a PEM certificate") from None
    return TlsMaterial(cert_path, key_path, stamp, self_signed)


def server_context(material: TlsMaterial) -> ssl.SSLContext:
    """An SSLContext for the API port, or TlsError naming the file that is wrong."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(material.cert_path), str(material.key_path))
    except FileNotFoundError as exc:
        raise TlsError(f"TLS file not found: {exc.filename}") from None
    except PermissionError as exc:
        raise TlsError(f"TLS file not readable: {exc.filename}") from None
    except ssl.SSLError as exc:
        raise TlsError(f"cannot load TLS certificate {material.cert_path} with key "
                       f"{material.key_path}: {exc.reason or exc}; do they belong together "
                       "and are they PEM?") from None
    return context
