"""The [journal] config section: defaults, units, relative paths, the HMAC key, errors with key paths."""
from __future__ import annotations

from pathlib import Path

import pytest

from hoopd.confkit import ConfigError, Table
from hoopd.config import parse
from hoopd.journal.config import JournalConfig, parse_journal


def journal(data: dict, base: Path = Path("/etc/hoopd")) -> JournalConfig:
    return parse_journal(Table(data, "journal"), base)


def test_defaults_mean_no_journal() -> None:
    cfg = journal({})
    assert cfg == JournalConfig() and cfg.dir is None and cfg.fsync == "interval"
    assert (cfg.max_result_rows, cfg.rotate_bytes, cfg.rotate_interval, cfg.retention) == (10_000, 64 << 20, 3600, None)


def test_all_keys(tmp_path: Path) -> None:
    (tmp_path / "key").write_bytes(b"s" * 32 + b"\n")
    cfg = journal({"dir": "j", "fsync": "always", "fsync_interval": "200ms", "rotate_bytes": "16MiB",
                   "rotate_interval": "15m", "retention": "90d", "hmac_key_file": "key", "max_result_rows": -1,
                   "max_copy_bytes": "64KiB", "max_value_bytes": 4096}, tmp_path)
    assert cfg.dir == str(tmp_path / "j") and cfg.fsync == "always" and cfg.fsync_interval == 0.2
    assert cfg.rotate_bytes == 16 << 20 and cfg.rotate_interval == 900 and cfg.retention == 90 * 86400
    assert cfg.hmac_key == b"s" * 32 and cfg.hmac_key_file == str(tmp_path / "key")
    assert (cfg.max_result_rows, cfg.max_copy_bytes, cfg.max_value_bytes) == (-1, 64 << 10, 4096)
    assert "sss" not in repr(cfg)


@pytest.mark.parametrize("data, path, words", [
    ({"fsync": "sometimes"}, "journal.fsync", "always | interval | never"),
    ({"rotate_bytes": "lots"}, "journal.rotate_bytes", "size"),
    ({"rotate_bytes": 100}, "journal.rotate_bytes", "at least 4096"),
    ({"retention": "soon"}, "journal.retention", "duration"),
    ({"retention": "10s"}, "journal.retention", "at least 60"),
    ({"max_result_rows": -2}, "journal.max_result_rows", "integer >= -1"),
    ({"hmac_key_file": "/nonexistent/key"}, "journal.hmac_key_file", "cannot read"),
    ({"dirr": "/x"}, "journal.dirr", "unknown key"),
])
def test_errors_name_the_key(data: dict, path: str, words: str) -> None:
    with pytest.raises(ConfigError) as e:
        journal(data)
    assert e.value.path == path and words in str(e.value)


def test_short_hmac_key_is_refused(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("short\n")
    with pytest.raises(ConfigError, match="journal.hmac_key_file: .*at least 16"):
        journal({"hmac_key_file": str(tmp_path / "key")})


def test_core_config_uses_it(tmp_path: Path) -> None:
    cfg = parse({"journal": {"dir": "journal", "fsync": "never"}}, tmp_path)
    assert cfg.journal.dir == str(tmp_path / "journal") and cfg.journal.fsync == "never"
