"""Credentials out of every record a run writes: config values and command-line overrides whose key names a
credential are replaced by ``<redacted>``. No torch / Lightning import, so the CLI's start-up path can use it."""
from __future__ import annotations

import contextlib
import re
import sys
from typing import Any

# A credential's key. Unambiguous stems anywhere in the key ("client_secret", "DB_PASSWORD", "WANDB_API_KEY"); "token",
# "auth" and "oauth" only as a whole word of the key (split at separators and camelCase: "hf_token", "authTokenValue"),
# so a count of tokens ("gen_tokens", "max_new_tokens"), "tokenizer" or "author" is kept; "key" only after a word
# that makes it a credential ("access_key", "ssh_key", "wandb_key"), so "ltm_key_dim" is kept.
_SECRET = re.compile(r"secret|passw(or)?d|passphrase|credential|bearer|api[_-]?key|authoriz|cookie", re.IGNORECASE)
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
_SECRET_WORDS = frozenset({"token", "auth", "oauth"})
_KEY_OWNERS = frozenset({"api", "access", "private", "secret", "ssh", "signing", "encryption", "wandb", "hf", "openai",
                         "client", "auth", "license", "session"})


def is_credential(key: Any) -> bool:
    """Whether a config key / override name (dotted or not) names a credential (see ``_SECRET`` above)."""
    key = str(key)
    if _SECRET.search(key):
        return True
    words = [w.lower() for w in _WORD.findall(key)]
    return any(w in _SECRET_WORDS for w in words) or any(
        a in _KEY_OWNERS and b == "key" for a, b in zip(words, words[1:]))


def redact(obj: Any) -> Any:
    """Drop values whose key looks like a credential (WANDB_API_KEY never reaches a config or log)."""
    if isinstance(obj, dict):
        return {k: ("<redacted>" if is_credential(k) else redact(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    return obj


def redact_args(args: list[str]) -> list[str]:
    """Command-line overrides with credential values replaced (``+logger.api_key=...`` -> ``<redacted>``)."""
    out = []
    for a in args:
        key, eq, _ = a.partition("=")
        out.append(f"{key}=<redacted>" if eq and is_credential(key) else a)
    return out


@contextlib.contextmanager
def redacted_argv():
    saved = sys.argv[:]
    sys.argv[:] = redact_args(saved)
    try:
        yield
    finally:
        sys.argv[:] = saved


def credential_values(args: list[str]) -> list[str]:
    """The values given to credential keys among command-line overrides (``+logger.api_key=sk-1`` -> ``sk-1``),
    longest first: what a record holding the overrides in any form (Hydra's ``multirun.yaml`` with its
    ``override_dirname``, a sweep's status lines) must not contain."""
    vals = {a.partition("=")[2] for a in args if "=" in a and is_credential(a.partition("=")[0])}
    return sorted((v for v in vals if v), key=len, reverse=True)


def scrub(text: str, args: list[str]) -> str:
    """``text`` with every credential value of the overrides ``args`` replaced by ``<redacted>``."""
    for v in credential_values(args):
        text = text.replace(v, "<redacted>")
    return text
