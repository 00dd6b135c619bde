"""Statement text decoded the way the server reads it (hoopd.pgwire.encodings).

The last test uses the real server as the oracle: random byte strings in every
ASCII-unsafe client encoding are converted by PostgreSQL and by the gateway, and wherever
both accept them, both must see the same ASCII characters in the same places (that is
what decides where a string literal ends).
"""
from __future__ import annotations

import random

import psycopg
import pytest

from hoopd.pgwire.encodings import UNSAFE, TextError, canonical, sql_decoder


def test_canonical_names_follow_postgres_aliases() -> None:
    assert canonical("utf-8") == canonical("Unicode") == canonical("UTF8") == "UTF8"
    assert canonical("Shift_JIS") == canonical("mskanji") == "SJIS"
    assert canonical("iso-8859-1") == "LATIN1" and canonical("nope") is None


def test_sjis_second_byte_backslash_is_part_of_the_character() -> None:
    d = sql_decoder("SJIS", "UTF8")
    text = d(b"select E'\xc3\x81\x5c'; delete from t; --'")
    assert text.count("\\") == 0 and "; delete from t;" in text  # the quote after 0x5C ends the string
    assert sql_decoder("UTF8", "UTF8")(b"select E'\xc3\x81\x5c'").endswith("\\'")


def test_gb18030_four_byte_characters() -> None:
    d = sql_decoder("GB18030", "UTF8")
    assert d(b"\x81\x30\x81\x30a") == "\x80a"
    with pytest.raises(TextError):
        d(b"\x81\x30\x81")  # cut short


@pytest.mark.parametrize("raw", [b"\xff", b"a\xc3", b"\xed\xa0\x80"])
def test_invalid_utf8_is_an_error_not_latin1(raw) -> None:
    with pytest.raises(TextError) as e:
        sql_decoder("UTF8", "UTF8")(raw)
    assert e.value.sqlstate == "22021" and '"UTF8"' in str(e.value)


def test_sql_ascii_server_follows_pg_any_to_server() -> None:
    assert sql_decoder("SQL_ASCII", "SQL_ASCII")(b"\xff'") == "\xff'"  # no conversion, no check
    assert sql_decoder("LATIN1", "SQL_ASCII")(b"\xe9") == "\xe9"
    with pytest.raises(TextError):  # an ASCII-unsafe client may send only ASCII to such a server
        sql_decoder("SJIS", "SQL_ASCII")(b"\x81\x5c")
    assert sql_decoder("SQL_ASCII", "UTF8")(b"caf\xc3\xa9") == "café"  # checked against the server encoding


def test_encodings_without_a_faithful_codec() -> None:
    assert sql_decoder("EUC_TW", "UTF8") is None and sql_decoder("MULE_INTERNAL", "UTF8") is None
    assert sql_decoder("klingon", "UTF8") is None


def _skeleton(text: str) -> str:
    return "".join(c if c.isascii() else "X" for c in text)


@pytest.mark.integration
@pytest.mark.parametrize("encoding", sorted(UNSAFE) + ["EUC_JP", "EUC_KR", "EUC_CN", "EUC_JIS_2004", "WIN1251"])
def test_same_ascii_skeleton_as_postgres(pg, encoding) -> None:
    rng = random.Random(encoding)
    alphabet = [0x27, 0x5C, 0x41, 0x30, 0x40, 0x7E] + list(range(0x80, 0x100))
    samples = [bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 12))) for _ in range(3000)]
    decode = sql_decoder(encoding, "UTF8")
    both = 0
    with psycopg.connect(pg.superuser_dsn("postgres"), autocommit=True) as c:
        for raw in samples:
            try:
                server = c.execute("select convert_from(%s::bytea, %s)", (raw, encoding)).fetchone()[0]
            except psycopg.Error:
                server = None
            try:
                ours = decode(raw)
            except TextError:
                ours = None
            if server is not None and ours is not None:
                both += 1
                assert _skeleton(ours) == _skeleton(server), (raw, ours, server)
    assert both > 100  # the comparison covered real multibyte text
