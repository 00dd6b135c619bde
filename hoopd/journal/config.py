"""The ``[journal]`` config section: where and how session journals are written."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from hoopd.confkit import ConfigError, Table, key_file

FSYNC_MODES = ("always", "interval", "never")


@dataclass(frozen=True)
class JournalConfig:
    dir: str | None = None  # None: no journal
    fsync: str = "interval"  # always | interval | never
    fsync_interval: float = 1.0  # seconds between syncs with fsync = "interval"
    rotate_bytes: int = 64 << 20  # start a new segment past this size
    rotate_interval: float = 3600.0  # ... or when the open segment is this old (seconds)
    retention: float | None = None  # delete finished segments older than this (seconds); None: keep
    hmac_key_file: str | None = None
    hmac_key: bytes | None = field(default=None, repr=False)  # read from hmac_key_file
    max_result_rows: int = 10_000  # rows kept per statement result; 0 none, -1 all
    max_copy_bytes: int = 1 << 20  # COPY data kept per COPY; 0 none
    max_value_bytes: int = 1 << 20  # per Bind parameter / FunctionCall argument
    anchor_interval: float = 60.0  # seconds between chain anchors (also at every rotation); see anchor.py
    anchor_syslog: str = "/dev/log"  # the syslog socket anchors also go to; "" for none


def parse_journal(t: Table, base: Path) -> JournalConfig:
    """Read ``[journal]``; relative paths are relative to ``base`` (the config file's folder)."""
    d = JournalConfig()
    jdir = t.str("dir")
    key_path, key = key_file(t, "hmac_key_file", base) or (None, None)
    cfg = JournalConfig(
        dir=None if jdir is None else str(Path(jdir) if os.path.isabs(jdir) else base / jdir),
        fsync=t.str("fsync", d.fsync, choices=FSYNC_MODES),
        fsync_interval=t.duration("fsync_interval", d.fsync_interval),
        rotate_bytes=t.size("rotate_bytes", d.rotate_bytes),
        rotate_interval=t.duration("rotate_interval", d.rotate_interval),
        retention=t.duration("retention"),
        hmac_key_file=key_path,
        hmac_key=key,
        max_result_rows=t.int("max_result_rows", d.max_result_rows, lo=-1),
        max_copy_bytes=t.size("max_copy_bytes", d.max_copy_bytes),
        max_value_bytes=t.size("max_value_bytes", d.max_value_bytes),
        anchor_interval=t.duration("anchor_interval", d.anchor_interval),
        anchor_syslog=t.str("anchor_syslog", d.anchor_syslog),
    )
    for name, lo in (("fsync_interval", 0.001), ("rotate_interval", 1.0), ("retention", 60.0),
                     ("anchor_interval", 1.0)):
        v = getattr(cfg, name)
        if v is not None and v < lo:
            raise ConfigError(t.key(name), f"must be at least {lo:g} seconds, got {t.data[name]!r}")
    if cfg.rotate_bytes < 4096:
        raise ConfigError(t.key("rotate_bytes"), f"must be at least 4096 bytes, got {t.data['rotate_bytes']!r}")
    t.done()
    return cfg
