"""A certificate and its key on disk -> the server's SSL context, with what the operator may see of it.

Every way a pair can be unusable (a file missing or unreadable, no PEM in it, an encrypted key, a key
that belongs to another certificate) is one :class:`ConfigError` naming the flag and the path, never a
byte of the files: the key is a secret, and a log or a terminal is no place for it.
"""

from __future__ import annotations

import datetime
import hashlib
import ssl

import attrs
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from ..errors import ConfigError

MAX_PEM_BYTES = 1 << 20  # a certificate chain or a key is a few KiB: a wrong path (a disk image) fails fast


@attrs.frozen
class ServerTls:
    """The loaded pair: the context each connection is wrapped with, and public facts for status and logs."""

    context: ssl.SSLContext = attrs.field(repr=False, eq=False)
    fingerprint: str  # SHA-256 of the certificate (DER), as browsers show it: "AB:CD:..."
    not_after: datetime.datetime  # UTC
    names: tuple[str, ...]  # the subject alternative names (DNS names and IP addresses)
    cert_path: str
    self_signed: bool

    def status(self) -> dict:
        return {"fingerprint_sha256": self.fingerprint, "not_after": self.not_after.isoformat(),
                "not_after_unix": self.not_after.timestamp(),
                "names": list(self.names), "certificate": self.cert_path, "self_signed": self.self_signed}


def fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest().upper()


def colon_hex(digest: str) -> str:
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def subject_names(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(str(name.value) for name in san if isinstance(name, (x509.DNSName, x509.IPAddress)))


def _read(path: str, flag: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_PEM_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{flag}: cannot read {path}: {exc.strerror}") from None
    if len(data) > MAX_PEM_BYTES:
        raise ConfigError(f"{flag}: {path} is over {MAX_PEM_BYTES >> 10} KiB, not a PEM file")
    return data


def read_certificate(path: str, flag: str = "--tls-cert") -> x509.Certificate:
    """The first (leaf) certificate of a PEM file that may hold a whole chain."""
    try:
        return x509.load_pem_x509_certificates(_read(path, flag))[0]
    except ValueError:
        raise ConfigError(f"{flag}: {path} holds no PEM certificate") from None


def read_private_key(path: str, flag: str = "--tls-key"):
    try:
        return serialization.load_pem_private_key(_read(path, flag), password=None)
    except TypeError:  # cryptography: "Password was not given but private key is encrypted"
        raise ConfigError(f"{flag}: {path} is encrypted; avatard needs the key unencrypted (keep it mode 0600)") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(f"{flag}: {path} holds no PEM private key") from None


def same_key(cert: x509.Certificate, key) -> bool:
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return cert.public_key().public_bytes(*spki) == key.public_key().public_bytes(*spki)


def _no_password() -> bytes:
    # Never let OpenSSL prompt on the terminal for a passphrase (read_private_key refuses encrypted keys first).
    return b""


def load(cert_path: str, key_path: str, cert_flag: str = "--tls-cert", key_flag: str = "--tls-key") -> ServerTls:
    """Check the pair with ``cryptography`` (for precise messages), then load it into a server context."""
    cert = read_certificate(cert_path, cert_flag)
    key = read_private_key(key_path, key_flag)
    if not same_key(cert, key):
        raise ConfigError(f"{key_flag}: {key_path} is not the key of the certificate in {cert_path}")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # No TLS 1.2 renegotiation: browsers never ask for it, and each one a stranger asks for is a handshake's
    # worth of our CPU inside a connection that already passed the handshake deadline.
    context.options |= ssl.OP_NO_RENEGOTIATION
    try:
        context.load_cert_chain(cert_path, key_path, password=_no_password)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"{cert_flag}: OpenSSL cannot use {cert_path} with {key_path}: "
                          f"{getattr(exc, 'reason', None) or exc.strerror}") from None
    return ServerTls(context=context, fingerprint=colon_hex(fingerprint(cert)), not_after=cert.not_valid_after_utc,
                     names=subject_names(cert), cert_path=cert_path, self_signed=cert.issuer == cert.subject)
