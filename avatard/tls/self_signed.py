"""``--tls self-signed``: a certificate for this host, made once and kept in the state directory.

Made on the first start, reused on later ones (so a browser that was told to trust it keeps trusting
it), and made again only when it no longer does its job: unreadable, its key gone or not its own, less
than :data:`RENEW_BEFORE` left, or no longer covering the host's names and addresses (a new address
from DHCP, another ``--host``). The key file is created owner-only (0600, in a 0700 directory), both
files are written to temporary names and renamed into place, so a crash leaves the old pair or a
mismatched one, which the next start replaces.

The certificate follows the rules browsers apply to every TLS server certificate, self-signed ones
included, once trusted (Apple's "Requirements for trusted certificates in iOS 13 and macOS 10.15",
support.apple.com/HT210176): names in subjectAltName (the CN is ignored), the serverAuth extended key
usage, SHA-256, at most 825 days of validity. The key is ECDSA P-256: every browser takes it, and
signing a handshake with it costs a fraction of RSA's, which matters when strangers open connections.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..errors import ConfigError
from . import certificate
from .host_addresses import certificate_names

logger = logging.getLogger("avatard.tls")

CERT_FILE = "tls-cert.pem"
KEY_FILE = "tls-key.pem"
VALIDITY = datetime.timedelta(days=825)  # Apple's ceiling for TLS server certificates (HT210176)
RENEW_BEFORE = datetime.timedelta(days=30)  # replaced this long before it expires, at a start
CLOCK_SKEW = datetime.timedelta(days=1)  # valid from yesterday: a client whose clock runs behind still accepts it


def load_or_create(directory: str, listen_host: str, now: datetime.datetime | None = None) -> tuple[str, str]:
    """(certificate path, key path) in ``directory``, valid for this host when listening on ``listen_host``."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    cert_path, key_path = os.path.join(directory, CERT_FILE), os.path.join(directory, KEY_FILE)
    names, addresses = certificate_names(listen_host)
    problem = why_not_reusable(cert_path, key_path, names, addresses, now)
    if problem is None:
        return cert_path, key_path
    cert_pem, key_pem = generate(names, addresses, now)
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        _write_private(key_path, key_pem)
        _write_private(cert_path, cert_pem, mode=0o644)
    except OSError as exc:
        raise ConfigError(f"--tls: cannot keep a self-signed certificate in {directory} ({exc.strerror}); "
                          "give --tls-cert and --tls-key instead") from None
    logger.info("made a self-signed certificate in %s (%s) for %s", cert_path, problem,
                ", ".join([*names, *map(str, addresses)]))
    return cert_path, key_path


def why_not_reusable(cert_path: str, key_path: str, names, addresses, now: datetime.datetime) -> str | None:
    """None when the kept pair can serve on; else why a new one is made (for the log)."""
    if not os.path.exists(cert_path):
        return "none yet"
    try:
        cert = certificate.read_certificate(cert_path)
        key = certificate.read_private_key(key_path)
    except ConfigError as exc:
        return f"the kept one is unusable: {exc}"
    if not certificate.same_key(cert, key):
        return "the kept key is not the certificate's"
    if cert.not_valid_after_utc - now < RENEW_BEFORE:
        return f"the kept one expires {cert.not_valid_after_utc:%Y-%m-%d}"
    if cert.not_valid_before_utc > now:
        return f"the kept one is valid only from {cert.not_valid_before_utc:%Y-%m-%d} (the clock went back)"
    covered = set(certificate.subject_names(cert))
    missing = [name for name in [*names, *map(str, addresses)] if name not in covered]
    if missing:
        return f"the kept one does not cover {', '.join(missing)}"
    return None


def generate(names: list[str], addresses: list, now: datetime.datetime) -> tuple[bytes, bytes]:
    """A fresh key and a self-signed certificate for ``names`` and ``addresses``, both PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    # Browsers read only subjectAltName; the common name is for people reading the certificate: the host name.
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[1] if len(names) > 1 else names[0]),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "avatard self-signed")])
    alt_names = [x509.DNSName(name) for name in names] + [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    cert = (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now - CLOCK_SKEW + VALIDITY)
            .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, content_commitment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _write_private(path: str, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to a new file with ``mode`` from the start (never readable by others, not even for a
    moment), then rename it over ``path``."""
    temporary = f"{path}.{os.getpid()}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(temporary, mode)  # O_CREAT's mode went through the umask
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
