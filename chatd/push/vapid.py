"""VAPID (RFC 8292): the server's P-256 key pair and the signed JWT that names it.

The private key is generated on first start and kept in ``<data_dir>/vapid_private.pem``
(PKCS#8 PEM, file mode 0600), so that browser subscriptions made against the public key stay
valid across restarts. Several processes sharing one data dir agree on one key: the file is
written to a temporary name and hard-linked into place, so the first writer wins and nobody
reads a half-written file. Processes with separate data dirs must be given the same file.

The JWT is ES256 over ``{"aud": <origin of the endpoint>, "exp": now + 12 h, "sub": subject}``,
sent as ``Authorization: vapid t=<jwt>,k=<public key>`` (the form pywebpush sends). Tokens are
cached per audience and reused until an hour before they expire.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
from pathlib import Path
from urllib.parse import urlsplit

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from chatd.errors import ConfigError
from chatd.push.options import DEFAULT_SUBJECT

KEY_FILE = "vapid_private.pem"
TOKEN_LIFETIME_S = 12 * 3600
TOKEN_REUSE_MARGIN_S = 3600


def b64url(data: bytes) -> str:
    """Base64url without padding, as Web Push uses everywhere."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Inverse of :func:`b64url`; accepts padded or unpadded input. ``ValueError`` if bad."""
    text = text.strip()
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not base64url: {exc}") from None


def check_subject(subject: str) -> str:
    """The VAPID ``sub`` claim must be a ``mailto:`` or ``https:`` URL (RFC 8292 section 2.1)."""
    if not (subject.startswith("mailto:") and len(subject) > len("mailto:")) and not (
        subject.startswith("https://") and urlsplit(subject).netloc
    ):
        raise ConfigError(
            f"vapid_subject must be a mailto: or https:// URL to contact the operator, "
            f"got {subject!r}"
        )
    return subject


class VapidKeys:
    """The server's VAPID identity: signs JWTs and exposes the public key."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey, subject: str) -> None:
        if not isinstance(private_key.curve, ec.SECP256R1):
            raise ConfigError("the VAPID key must be a P-256 (prime256v1) key")
        self.private_key = private_key
        self.subject = check_subject(subject)
        point = private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        self.public_key_bytes = point
        self.public_key_b64 = b64url(point)
        # audience -> (token, expires_at); one entry per push service origin, so it stays small.
        self._tokens: dict[str, tuple[str, float]] = {}

    @classmethod
    def generate(cls, subject: str = DEFAULT_SUBJECT) -> VapidKeys:
        return cls(ec.generate_private_key(ec.SECP256R1()), subject)

    @classmethod
    def load_or_create(cls, data_dir: str | os.PathLike[str], subject: str) -> VapidKeys:
        """Read ``<data_dir>/vapid_private.pem``, creating it (mode 0600) if missing.

        Raises:
            ConfigError: the data dir cannot be written or the file is not a P-256 PEM key.
        """
        check_subject(subject)
        directory = Path(data_dir)
        path = directory / KEY_FILE
        try:
            if not path.exists():
                directory.mkdir(parents=True, exist_ok=True)
                _create_key_file(path)
            pem = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read or create the VAPID key {path}: {exc}") from None
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise ConfigError(f"{path} is not a usable PEM private key: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"{path} is not an EC (P-256) private key")
        return cls(key, subject)

    def authorization(self, endpoint: str, now: float) -> str:
        """The ``Authorization`` header value for a push to ``endpoint`` at time ``now``
        (Unix seconds)."""
        parts = urlsplit(endpoint)
        audience = f"{parts.scheme}://{parts.netloc}"
        cached = self._tokens.get(audience)
        if cached is not None and cached[1] - TOKEN_REUSE_MARGIN_S > now:
            token = cached[0]
        else:
            expires = int(now) + TOKEN_LIFETIME_S
            token = self._sign({"aud": audience, "exp": expires, "sub": self.subject})
            self._tokens[audience] = (token, expires)
        return f"vapid t={token},k={self.public_key_b64}"

    def _sign(self, claims: dict[str, object]) -> str:
        header = b64url(json.dumps({"typ": "JWT", "alg": "ES256"}, separators=(",", ":")).encode())
        body = b64url(json.dumps(claims, separators=(",", ":")).encode())
        signing_input = f"{header}.{body}".encode("ascii")
        der = self.private_key.sign(signing_input, ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        # JWS ES256 wants the raw 64-byte r || s, not DER.
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return f"{header}.{body}.{b64url(signature)}"


def _create_key_file(path: Path) -> None:
    """Write a fresh key under a temporary name, then link it into place: the first process
    to link wins and the others read the winner's key."""
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
