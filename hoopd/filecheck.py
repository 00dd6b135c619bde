"""Permission checks on the files that hold secrets or grant access.

* A file that grants access (``[control].ssh_authorized_keys``) is refused when someone
  other than its owner could change it: writable by group or others, owned by another
  user than root or the gateway's, or in a folder others may write without the sticky bit
  (they could swap the file). Anyone who can write it can add an admin key.
* A file that holds a secret (upstream password files, the journal HMAC key, the LDAP bind
  password, the TLS key) gets a warning when group or others may read it, as libpq warns
  about ``.pgpass``. Group read is accepted for a root-owned file (a secrets group such as
  Debian's ssl-cert, as PostgreSQL allows for its own key file).
* The journal folder is created 0700; an existing one that group or others may enter
  gets a warning (it holds every statement and result).

Messages name the config key and the file, never the content.
"""
from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING, Iterator

from hoopd.confkit import ConfigError

if TYPE_CHECKING:
    from hoopd.config import Config
    from hoopd.confkit import Secret


def _mode(st: os.stat_result) -> str:
    return f"{stat.S_IMODE(st.st_mode):04o}"


def access_file_problem(path: str) -> str | None:
    """Why others could change the access-granting file at ``path`` (None: they cannot,
    or it does not exist yet)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{path} is writable by group or others (mode {_mode(st)}); chmod go-w it"
    if st.st_uid not in (0, os.geteuid()):
        return f"{path} is owned by uid {st.st_uid}, not by root or the gateway's user; chown it"
    folder = os.path.dirname(os.path.abspath(path))
    try:
        dst = os.stat(folder)
    except OSError:
        return None
    if dst.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not dst.st_mode & stat.S_ISVTX:
        return f"{path} is in {folder}, which group or others may write (mode {_mode(dst)}); they could replace it"
    return None


def check_access_file(key: str, path: str) -> None:
    """Raise ConfigError(key) when others could change the file (see access_file_problem)."""
    problem = access_file_problem(path)
    if problem is not None:
        raise ConfigError(key, f"refused: {problem} (anyone who can write it can add an admin key)")


def secret_file_warning(key: str, path: str) -> str | None:
    """A warning when group or others may read the secret file (None when it is private)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    loose = st.st_mode & (stat.S_IRWXO | (0 if st.st_uid == 0 else stat.S_IRWXG))
    if not loose:
        return None
    return (f"{key}: {path} has group or world access (mode {_mode(st)}); "
            f"it holds a secret: chmod 600 it (or 640 owned by root with a secrets group)")


def _file_of(secret: Secret | None) -> str | None:
    origin = secret.origin if secret is not None else ""
    return origin[len("file "):] if origin.startswith("file ") else None


def secret_files(cfg: Config) -> Iterator[tuple[str, str]]:
    """(config key, file) for every file the config reads a secret from."""
    if cfg.tls.key:
        yield "tls.key", cfg.tls.key
    if cfg.journal.hmac_key_file:
        yield "journal.hmac_key_file", cfg.journal.hmac_key_file
    ldap = cfg.identity.ldap
    if ldap is not None and (path := _file_of(ldap.bind_password)):
        yield "identity.ldap.bind_password_file", path
    for name, conn in cfg.connections.items():
        for level, cred in conn.credentials.items():
            if path := _file_of(cred.password):
                yield f"connections.{name}.credentials.{level}.password_file", path


def warnings(cfg: Config) -> list[str]:
    """Start-up and check-config warnings about the files of a loaded config."""
    found = [w for key, path in secret_files(cfg) if (w := secret_file_warning(key, path))]
    jdir = cfg.journal.dir
    if jdir and os.path.isdir(jdir) and (mode := stat.S_IMODE(os.stat(jdir).st_mode)) & 0o077:
        found.append(f"journal.dir: {jdir} has group or world access (mode {mode:04o}); the journal holds every"
                     " statement and result: chmod 700 it")
    keys = cfg.control.ssh_authorized_keys
    if cfg.listen.ssh and keys and not os.path.exists(keys):
        found.append(f"control.ssh_authorized_keys: {keys} does not exist; nobody can log in to the SSH console")
    return found
