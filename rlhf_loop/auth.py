"""The operator credential: a salted scrypt hash, configured, compared in constant time.

Why a hash in configuration and not a password: a secrets file or an environment variable is
read by backups, CI logs and colleagues' shells; a scrypt hash leaked there still does not let
anyone in. Why scrypt: it is in the standard library (``hashlib.scrypt``) and memory-hard.

Where it comes from, highest first: the ``RLHF_LOOP_OPERATOR_PASSWORD_HASH`` environment
variable, then ``operator_password_hash`` in Streamlit's ``secrets.toml``. With neither, the app
makes a one-off password per server start and prints it to the terminal (the way Jupyter prints
its token), so a fresh demo is usable and still not open to whoever reaches the port.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Mapping
from typing import Any

HASH_ENV = "RLHF_LOOP_OPERATOR_PASSWORD_HASH"
HASH_SECRET = "operator_password_hash"
SCHEME = "scrypt"
# 16 MiB of memory and ~50 ms per check: cheap for one login, costly for a guessing attack.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
MIN_PASSWORD_CHARS = 8
_HOW_TO_MAKE = "make one with: python -m rlhf_loop hash-password"


class CredentialError(ValueError):
    """The configured credential is unusable; the message says how to fix it."""


def hash_password(password: str, salt: bytes | None = None) -> str:
    """``scrypt$n$r$p$salt$hash``: the parameters travel with the hash, so they can be raised
    later without breaking hashes made before."""
    if len(password) < MIN_PASSWORD_CHARS:
        raise CredentialError(f"the password needs at least {MIN_PASSWORD_CHARS} characters")
    salt = secrets.token_bytes(16) if salt is None else salt
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return "$".join([SCHEME, str(SCRYPT_N), str(SCRYPT_R), str(SCRYPT_P), _b64(salt), _b64(digest)])


def verify_password(password: str, encoded: str) -> bool:
    """True when ``password`` matches; the comparison takes the same time for any mismatch."""
    n, r, p, salt, expected = _parse(encoded)
    return hmac.compare_digest(_scrypt(password, salt, n, r, p), expected)


def configured_hash(environ: Mapping[str, str], secrets_: Mapping[str, Any]) -> str | None:
    """The operator hash from the environment or the secrets, checked; None when neither has one.

    A value that is not a hash (say, a password pasted by mistake) is refused, never compared
    in clear.
    """
    encoded = environ.get(HASH_ENV) or secrets_.get(HASH_SECRET)
    if not encoded:
        return None
    _parse(str(encoded))
    return str(encoded)


def one_off_password() -> tuple[str, str]:
    """A random password for this server start and its hash, when none is configured."""
    password = secrets.token_urlsafe(12)
    return password, hash_password(password)


def _parse(encoded: str) -> tuple[int, int, int, bytes, bytes]:
    parts = encoded.strip().split("$")
    if len(parts) != 6 or parts[0] != SCHEME:
        raise CredentialError(
            f"the operator credential ({HASH_ENV} or {HASH_SECRET} in secrets.toml) is not an "
            f"rlhf-loop password hash; {_HOW_TO_MAKE}"
        )
    try:
        n, r, p = (int(x) for x in parts[1:4])
        salt = base64.b64decode(parts[4], validate=True)
        digest = base64.b64decode(parts[5], validate=True)
    except ValueError:
        raise CredentialError(f"the operator password hash is damaged; {_HOW_TO_MAKE}") from None
    # Bounded so that a tampered hash cannot make each login check eat the server's memory.
    sane = 2**10 <= n <= 2**20 and not n & (n - 1) and 1 <= r <= 64 and 1 <= p <= 16
    if not sane or len(digest) < 16:
        raise CredentialError(f"the operator password hash has bad parameters; {_HOW_TO_MAKE}")
    return n, r, p, salt, digest


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=256 * n * r * p + 2**20, dklen=32
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
