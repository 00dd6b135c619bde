"""Content detectors: where in a text a sensitive value is (pure functions, no I/O).

Each detector returns the (start, end) spans it found. A candidate the regular
expression finds is kept only when it validates (Luhn for cards, mod-97 for IBANs, the
assigned ranges for US SSNs, ``ipaddress`` for IPs), so a 9-digit business id is not an
SSN and a 16-digit order number that fails Luhn is not a card.
"""
from __future__ import annotations

import ipaddress
import math
import re
from collections import Counter
from typing import Callable, Iterable

Span = tuple[int, int]
Detector = Callable[[str], list[Span]]

_EMAIL = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}")
_CARD = re.compile(r"(?<![\d])\d(?:[ \-]?\d){12,18}(?![\d])")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b")
_SSN = re.compile(r"(?<![\d\-])(\d{3})[- ](\d{2})[- ](\d{4})(?![\d\-])")
_PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .\-]?)?(?:\(\d{2,4}\)[ .\-]?|\d{2,4}[ .\-])\d{3,4}[ .\-]?\d{3,4}(?![\w])"
                    r"|(?<![\w+])\+\d{8,15}(?!\w)")
_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")
_IPV6 = re.compile(r"(?<![0-9A-Fa-f:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![0-9A-Fa-f:])")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_\-]{5,}\.eyJ[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]{10,}")
_KEYS = re.compile(
    r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"  # AWS access key ids
    r"|\bgh[pousr]_[A-Za-z0-9]{36,}\b|\bgithub_pat_[A-Za-z0-9_]{40,}\b"  # GitHub tokens
    r"|\bxox[abposr]-[A-Za-z0-9\-]{10,}\b"  # Slack tokens
    r"|\b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}\b"  # Stripe keys
    r"|\bglpat-[A-Za-z0-9_\-]{20}\b"  # GitLab personal tokens
    r"|\bAIza[0-9A-Za-z_\-]{35}\b"  # Google API keys
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----")
_SECRETISH = re.compile(r"[A-Za-z0-9+/_\-]{32,}={0,2}")
ENTROPY_BITS = 4.0  # per character: random base64 has ~6, English words and hex ids less


def _spans(pattern: re.Pattern[str], text: str, valid: Callable[[str], bool] | None = None) -> list[Span]:
    return [m.span() for m in pattern.finditer(text) if valid is None or valid(m.group())]


def luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card(s: str) -> bool:
    digits = s.replace(" ", "").replace("-", "")
    return 13 <= len(digits) <= 19 and len(set(digits)) > 1 and luhn(digits)


def _iban(s: str) -> bool:
    compact = s.replace(" ", "")
    if not 15 <= len(compact) <= 34:
        return False
    moved = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def _ssn(s: str) -> bool:
    area, group, serial = s[:3], s[4:6], s[7:]
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def _ip(s: str) -> bool:
    try:
        ipaddress.ip_address(s)
    except ValueError:
        return False
    return True


def _ipv6(s: str) -> bool:
    return s.count(":") >= 2 and _ip(s)


def _phone(s: str) -> bool:
    digits = sum(c.isdigit() for c in s)
    return 8 <= digits <= 15


def entropy(s: str) -> float:
    """Shannon entropy in bits per character."""
    n = len(s)
    return -sum(c / n * math.log2(c / n) for c in Counter(s).values())


def _secretish(s: str) -> bool:
    kinds = (any(c.islower() for c in s), any(c.isupper() for c in s), any(c.isdigit() for c in s))
    return sum(kinds) >= 2 and entropy(s) >= ENTROPY_BITS


def email(text: str) -> list[Span]:
    return _spans(_EMAIL, text) if "@" in text else []


def card(text: str) -> list[Span]:
    return _spans(_CARD, text, _card)


def iban(text: str) -> list[Span]:
    return _spans(_IBAN, text, _iban)


def ssn(text: str) -> list[Span]:
    return _spans(_SSN, text, _ssn)


def phone(text: str) -> list[Span]:
    return _spans(_PHONE, text, _phone)


def ipv4(text: str) -> list[Span]:
    return _spans(_IPV4, text, _ip) if "." in text else []


def ipv6(text: str) -> list[Span]:
    return _spans(_IPV6, text, _ipv6) if ":" in text else []


def jwt(text: str) -> list[Span]:
    return _spans(_JWT, text) if "eyJ" in text else []


def api_key(text: str) -> list[Span]:
    return _spans(_KEYS, text)


def secret(text: str) -> list[Span]:
    """Long tokens of high entropy (random keys without a known prefix)."""
    return _spans(_SECRETISH, text, _secretish)


DETECTORS: dict[str, Detector] = {"email": email, "card": card, "iban": iban, "ssn": ssn, "phone": phone,
                                  "ipv4": ipv4, "ipv6": ipv6, "jwt": jwt, "api_key": api_key, "secret": secret}


# For each detector, a bytes pattern that matches wherever the detector could find
# something in an ASCII-compatible encoding, and often more (no look-arounds, so it also
# holds inside a DataRow body next to its length headers), written without nested
# repetition so it runs in linear time: a row the combined prefilter finds nothing in
# needs no decoding and no detector at all.
PREFILTERS: dict[str, bytes] = {
    "email": rb"@", "card": rb"\d[\d \-]{12}", "iban": rb"[A-Z]{2}\d{2}", "ssn": rb"\d{3}[- ]\d{2}[- ]\d{4}",
    "phone": rb"[\d+(][\d .\-()]{7}",
    "ipv4": rb"\d\.\d{1,3}\.\d{1,3}\.\d", "ipv6": rb":[0-9A-Fa-f]{0,4}:", "jwt": rb"eyJ",
    "api_key": rb"AKIA|ASIA|gh[pousr]_|github_pat_|xox[abposr]-|_live_|_test_|glpat-|AIza|PRIVATE KEY",
    "secret": rb"[A-Za-z0-9+/_\-]{32}",
}


_DIGITS = b"0123456789"
_ALNUM = _DIGITS + bytes(range(65, 91)) + bytes(range(97, 123))
RUNS: dict[str, tuple[bytes, int]] = {
    "card": (_DIGITS + b" -", 13), "phone": (_DIGITS + b"+(). -", 8), "ipv4": (_DIGITS + b".", 7),
    "secret": (_ALNUM + b"+/_-", 32),
}
"""Detectors whose prefilter is a run of bytes of one class at least so long (a superset
of its PREFILTERS pattern): found by ``bytes.translate`` and ``find`` at C speed, where a
regex would try its repetition at every digit (measured: 22 ns per byte of a DataRow
run of md5 text, 1.1 us per row; the run search is a few ns per byte)."""


class Prefilter:
    """The combined prefilter of some detectors: literal-led patterns in one regex, class
    runs (RUNS) by translate-and-find. ``search`` says whether anything could match;
    ``spans`` gives where, sorted by start (every true match lies inside one of them)."""

    def __init__(self, detectors: Iterable[str]) -> None:
        names = list(dict.fromkeys(detectors))
        others = [PREFILTERS[d] for d in names if d not in RUNS]
        self.regex = re.compile(b"|".join(others)) if others else None
        self.runs: list[tuple[bytes, bytes]] = []  # (translate table: class -> "0", others -> "\1"; n zeros)
        for d in names:
            if d in RUNS:
                members, n = RUNS[d]
                table = bytes(0x30 if b in members else 1 for b in range(256))
                self.runs.append((table, b"0" * n))

    def search(self, data: bytes) -> bool:
        if self.regex is not None and self.regex.search(data) is not None:
            return True
        return any(data.translate(table).find(zeros) >= 0 for table, zeros in self.runs)

    def spans(self, data: bytes) -> list[tuple[int, int]]:
        out = [mt.span() for mt in self.regex.finditer(data)] if self.regex is not None else []
        for table, zeros in self.runs:
            t = data.translate(table)
            pos = t.find(zeros)
            while pos >= 0:
                end = t.find(b"\1", pos)
                end = len(t) if end < 0 else end
                out.append((pos, end))
                pos = t.find(zeros, end)
        if len(self.runs) + (self.regex is not None) > 1:
            out.sort()
        return out


def prefilter(detectors: Iterable[str]) -> Prefilter:
    return Prefilter(detectors)


def regex(pattern: re.Pattern[str]) -> Detector:
    """A custom detector from a compiled regular expression."""
    return lambda text: _spans(pattern, text)


def merge(spans: Iterable[Span]) -> list[Span]:
    """Overlapping or touching spans joined, in order."""
    out: list[Span] = []
    for start, end in sorted(spans):
        if out and start <= out[-1][1]:
            if end > out[-1][1]:
                out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out
