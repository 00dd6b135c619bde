"""Reading statement text the way the server will: PostgreSQL client encodings.

The server converts a Query's bytes from ``client_encoding`` to the server encoding and
then lexes them. A gateway that decodes the same bytes differently (always as UTF-8, say)
can disagree with the server about where a string literal ends. ``sql_decoder`` returns
the function that turns a message's statement bytes into the text the server's lexer
will see, following PostgreSQL's own rules (mbutils.c ``pg_any_to_server``):

* client encoding equal to the server's, or SQL_ASCII: no conversion; the bytes are
  checked against the server encoding (SQL_ASCII servers check nothing);
* an SQL_ASCII server with another client encoding: no conversion; ASCII-safe client
  encodings are checked, ASCII-unsafe ones may only send ASCII;
* otherwise the bytes are converted from the client encoding.

The ASCII-unsafe encodings (SJIS, SHIFT_JIS_2004, BIG5, GBK, GB18030, UHC, JOHAB) allow
0x5C (backslash) and other ASCII bytes as the second byte of a character. Text in them
is cut into characters with PostgreSQL's own ``pg_*_mblen`` rules and each character is
decoded on its own, so the gateway's idea of the character boundaries is the server's;
a character Python's codec cannot decode refuses the text. Encodings with no faithful
Python codec (EUC_TW, MULE_INTERNAL) return None: statements in them cannot be read.
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Callable

Decoder = Callable[[bytes], str]


class TextError(ValueError):
    """Statement bytes that are not valid in the session's encoding (SQLSTATE 22021)."""

    sqlstate = "22021"


# PostgreSQL encoding name -> Python codec (None: no faithful codec).
CODECS: dict[str, str | None] = {
    "UTF8": "utf-8", "SQL_ASCII": "latin-1",
    "LATIN1": "latin-1", "LATIN2": "iso8859-2", "LATIN3": "iso8859-3", "LATIN4": "iso8859-4",
    "LATIN5": "iso8859-9", "LATIN6": "iso8859-10", "LATIN7": "iso8859-13", "LATIN8": "iso8859-14",
    "LATIN9": "iso8859-15", "LATIN10": "iso8859-16",
    "ISO_8859_5": "iso8859-5", "ISO_8859_6": "iso8859-6", "ISO_8859_7": "iso8859-7", "ISO_8859_8": "iso8859-8",
    "WIN866": "cp866", "WIN874": "cp874", "WIN1250": "cp1250", "WIN1251": "cp1251", "WIN1252": "cp1252",
    "WIN1253": "cp1253", "WIN1254": "cp1254", "WIN1255": "cp1255", "WIN1256": "cp1256", "WIN1257": "cp1257",
    "WIN1258": "cp1258", "KOI8R": "koi8-r", "KOI8U": "koi8-u",
    "EUC_JP": "euc_jp", "EUC_JIS_2004": "euc_jis_2004", "EUC_KR": "euc_kr", "EUC_CN": "gb2312",
    "EUC_TW": None, "MULE_INTERNAL": None,
    "SJIS": "cp932", "SHIFT_JIS_2004": "shift_jis_2004", "BIG5": "big5", "GBK": "gbk",
    "GB18030": "gb18030", "UHC": "cp949", "JOHAB": "johab",
}

# Aliases PostgreSQL accepts (pg_char_to_encoding compares names without non-alphanumerics,
# case-insensitively), for the names a SET may use.
_ALIASES = {
    "unicode": "UTF8", "utf8": "UTF8", "sqlascii": "SQL_ASCII",
    "latin1": "LATIN1", "latin2": "LATIN2", "latin3": "LATIN3", "latin4": "LATIN4", "latin5": "LATIN5",
    "latin6": "LATIN6", "latin7": "LATIN7", "latin8": "LATIN8", "latin9": "LATIN9", "latin10": "LATIN10",
    "iso88591": "LATIN1", "iso88592": "LATIN2", "iso88593": "LATIN3", "iso88594": "LATIN4",
    "iso88599": "LATIN5", "iso885910": "LATIN6", "iso885913": "LATIN7", "iso885914": "LATIN8",
    "iso885915": "LATIN9", "iso885916": "LATIN10", "iso88595": "ISO_8859_5", "iso88596": "ISO_8859_6",
    "iso88597": "ISO_8859_7", "iso88598": "ISO_8859_8",
    "win": "WIN1251", "alt": "WIN866", "win866": "WIN866", "win874": "WIN874", "koi8": "KOI8R",
    "koi8r": "KOI8R", "koi8u": "KOI8U", "mskanji": "SJIS", "sjis": "SJIS", "shiftjis": "SJIS",
    "shiftjis2004": "SHIFT_JIS_2004", "big5": "BIG5", "gbk": "GBK", "cp936": "GBK", "gb18030": "GB18030",
    "uhc": "UHC", "cp949": "UHC", "johab": "JOHAB", "tcvn": "WIN1258", "tcvn5712": "WIN1258",
    "vscii": "WIN1258", "abc": "WIN1258", "eucjp": "EUC_JP", "eucjis2004": "EUC_JIS_2004", "euckr": "EUC_KR",
    "euccn": "EUC_CN", "euctw": "EUC_TW", "muleinternal": "MULE_INTERNAL",
    **{f"win{n}": f"WIN{n}" for n in range(1250, 1259)},
}
_NON_ALNUM = re.compile(r"[^a-z0-9]")


def canonical(name: str) -> str | None:
    """PostgreSQL's canonical name for an encoding name or alias, or None if unknown."""
    return _ALIASES.get(_NON_ALNUM.sub("", name.lower()))


def _sjis_len(b: int, nxt: int) -> int:
    return 1 if 0xA1 <= b <= 0xDF else 2


def _two(b: int, nxt: int) -> int:
    return 2


def _gb18030_len(b: int, nxt: int) -> int:
    return 4 if 0x30 <= nxt <= 0x39 else 2


def _euc_len(b: int, nxt: int) -> int:
    return 3 if b == 0x8F else 2


# ASCII-unsafe encodings -> the byte length of a character starting with a high-bit byte
# (PostgreSQL's pg_sjis_mblen, pg_big5_mblen, ... in src/common/wchar.c).
_MBLEN: dict[str, Callable[[int, int], int]] = {
    "SJIS": _sjis_len, "SHIFT_JIS_2004": _sjis_len, "BIG5": _two, "GBK": _two, "UHC": _two,
    "GB18030": _gb18030_len, "JOHAB": _euc_len,
}
UNSAFE = frozenset(_MBLEN)
"""Client-only encodings whose multibyte characters can contain ASCII bytes."""


def _strict(codec: str, encoding: str) -> Decoder:
    def decode(raw: bytes) -> str:
        try:
            return raw.decode(codec)
        except UnicodeDecodeError as e:
            raise TextError(f'invalid byte sequence for encoding "{encoding}": 0x{raw[e.start]:02x}') from None
    return decode


def _ascii_only(encoding: str) -> Decoder:
    def decode(raw: bytes) -> str:
        if raw.isascii():
            return raw.decode("ascii")
        pos = next(i for i, b in enumerate(raw) if b >= 0x80)
        raise TextError(f'invalid byte value for encoding "{encoding}": 0x{raw[pos]:02x}')
    return decode


def _segmented(codec: str, encoding: str) -> Decoder:
    """Decode character by character, cut where PostgreSQL cuts (see module docstring)."""
    mblen = _MBLEN[encoding]

    def decode(raw: bytes) -> str:
        if raw.isascii():
            return raw.decode("ascii")
        out: list[str] = []
        i, n = 0, len(raw)
        while i < n:
            j = i
            while j < n and raw[j] < 0x80:
                j += 1
            if j > i:
                out.append(raw[i:j].decode("ascii"))
                i = j
                if i >= n:
                    break
            width = mblen(raw[i], raw[i + 1] if i + 1 < n else 0)
            piece = raw[i:i + width]
            try:
                ch = piece.decode(codec) if len(piece) == width else ""
            except UnicodeDecodeError:
                ch = ""
            if len(ch) != 1:
                raise TextError(f'invalid byte sequence for encoding "{encoding}": 0x{raw[i]:02x}')
            out.append(ch)
            i += width
        return "".join(out)
    return decode


@lru_cache(maxsize=256)
def sql_decoder(client_encoding: str, server_encoding: str) -> Decoder | None:
    """The decoder (one shared object per pair of settings) for statement text under these reported settings, or None when the
    gateway cannot read it faithfully (unknown encoding, no faithful codec)."""
    client = canonical(client_encoding)
    server = canonical(server_encoding)
    if client is None or server is None or CODECS.get(server) is None or server in UNSAFE:
        return None
    if client == server or client == "SQL_ASCII":
        return _strict(CODECS[server], server) if server != "SQL_ASCII" else _strict("latin-1", server)
    codec = CODECS.get(client)
    if server == "SQL_ASCII":
        if client in UNSAFE:
            return _ascii_only(client)
        return _strict(codec, client) if codec else None
    if codec is None:
        return None
    return _segmented(codec, client) if client in UNSAFE else _strict(codec, client)
