"""``python -m rlhf_loop hash-password``: turn an operator password into the configured hash."""

from __future__ import annotations

import getpass
import sys

from rlhf_loop.auth import HASH_ENV, HASH_SECRET, CredentialError, hash_password


def hash_password_command() -> int:
    """Asks twice on a terminal; reads one line from a pipe, so scripts can provision it."""
    if sys.stdin.isatty():
        password = getpass.getpass("Operator password: ")
        if getpass.getpass("Again: ") != password:
            print("the two passwords differ; nothing was made", file=sys.stderr)
            return 2
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    try:
        encoded = hash_password(password)
    except CredentialError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(encoded)
    print(
        f'\nPut it in .streamlit/secrets.toml as {HASH_SECRET} = "{encoded}"\n'
        f"or in the environment as {HASH_ENV}='{encoded}'",
        file=sys.stderr,
    )
    return 0
