"""Patient pseudonyms: HMAC-SHA256 of the PatientID under a secret key that only the site holds.

A plain or fixed-salt hash of a medical record number is reversible by trying every MRN (a loop over
ten million numbers takes seconds). With a keyed HMAC, trying MRNs needs the key, so the key is the
secret: it lives in one file per site (``--key-file``, else ``$XRAYTRIAGE_KEY_FILE``, else
``~/.config/xraytriage/site.key``), is created (32 random bytes, mode 0600) with a message saying so
the first time it is needed, and is never written into a config, bundle, manifest, report or log.
The same key always gives the same pseudonym, so manifests prepared at one site stay joinable; keep
a backup, since a new key gives new pseudonyms.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from pathlib import Path

from xraytriage.utils.errors import InputRefused

log = logging.getLogger(__name__)

KEY_ENV = "XRAYTRIAGE_KEY_FILE"
KEY_BYTES = 32
PSEUDONYM_HEX = 32  # 128 bits: collisions are out of reach for any patient population


class KeyFileError(InputRefused):
    """The key file cannot be used (unreadable, too short, not hex); the message says how to fix it."""


class SiteKey:
    """The site's secret. Its ``repr`` names the file, never the secret."""

    def __init__(self, secret: bytes, path: Path) -> None:
        if len(secret) < KEY_BYTES:
            raise KeyFileError(
                f"{path}: a site key needs at least {KEY_BYTES} bytes, this one has {len(secret)}"
            )
        self._secret = secret
        self.path = path

    def pseudonym(self, patient_id: object) -> str | None:
        """The patient's pseudonym (hex), or None without an ID. Surrounding spaces do not count."""
        if patient_id is None or str(patient_id).strip() == "":
            return None
        text = str(patient_id).strip().encode("utf-8", "surrogateescape")
        return hmac.new(self._secret, text, hashlib.sha256).hexdigest()[:PSEUDONYM_HEX]

    def __repr__(self) -> str:
        return f"SiteKey(path={str(self.path)!r})"


def default_key_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "xraytriage" / "site.key"


def key_file_path(explicit: str | Path | None = None) -> Path:
    """``--key-file``, else ``$XRAYTRIAGE_KEY_FILE``, else the per-user default."""
    if explicit is not None:
        return Path(explicit).expanduser()
    from_env = os.environ.get(KEY_ENV, "").strip()
    return Path(from_env).expanduser() if from_env else default_key_file()


def _create(path: Path) -> bool:
    """Write a fresh key with O_EXCL (two processes racing end with one key); False if one appeared."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(secrets.token_hex(KEY_BYTES) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return True


def load_site_key(path: str | Path | None = None, create: bool = True) -> SiteKey:
    """The site key from :func:`key_file_path`; created (with a warning that says where) if absent."""
    p = key_file_path(path)
    if not p.exists():
        if not create:
            raise KeyFileError(f"{p}: no site key file (pass --key-file or set {KEY_ENV})")
        if _create(p):
            log.warning(
                "created a new site key for patient pseudonyms in %s (readable only by you). Keep it "
                "secret and back it up: the same key is needed to get the same pseudonyms again; "
                "use it on other machines with --key-file or %s",
                p,
                KEY_ENV,
            )
    try:
        text = p.read_text(encoding="ascii").strip()
        secret = bytes.fromhex(text)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise KeyFileError(
            f"{p}: not a usable site key ({exc.__class__.__name__}); it must hold {2 * KEY_BYTES} hex "
            "digits (delete it to have a new one made: pseudonyms then change)"
        ) from None
    if p.stat().st_mode & 0o077:
        log.warning("site key %s is readable by other users: chmod 600 it", p)
    return SiteKey(secret, p)
