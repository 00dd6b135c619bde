"""COPY ... TO STDOUT in text and CSV format, field by field: the fields a column rule
masks are replaced in each CopyData line, every other byte is kept as sent.

``CopyFormat.of(stmt)`` reads a CopyStmt's options (FORMAT, DELIMITER, NULL, QUOTE,
ESCAPE, HEADER); ``mask_line`` splits one line (one CopyData message: PostgreSQL sends
one per row, a CSV field's newlines included) and replaces the masked fields. COPY has
no column types, so a masked field becomes the rule's text replacement whatever the
column's type (the ``null`` strategy: the format's NULL). Options the splitter cannot
follow (ENCODING, which changes the bytes' encoding; a multi-character delimiter) make
``of`` answer None and the statement is refused instead.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

Replace = Callable[[object, str], "str | None"]  # (rule, field text) -> replacement, None: NULL


@dataclass(frozen=True)
class CopyFormat:
    csv: bool = False
    delimiter: str = "\t"
    null: str = "\\N"
    quote: str = '"'
    escape: str = '"'
    header: bool = False

    @classmethod
    def of(cls, stmt: dict) -> "CopyFormat | None":
        """The format of a ``{"CopyStmt": ...}`` tree; None when it cannot be split safely."""
        opts: dict[str, object] = {}
        for o in stmt["CopyStmt"].get("options", []):
            d = o.get("DefElem", {})
            arg = d.get("arg")
            value: object = True if arg is None else (arg.get("String", {}).get("sval") if "String" in arg
                                                     else arg.get("Boolean", {}).get("boolval", False)
                                                     if "Boolean" in arg else arg)
            opts[d.get("defname", "")] = value
        if "encoding" in opts or opts.get("format", "text") not in ("text", "csv"):
            return None
        csv = opts.get("format") == "csv"
        delimiter = opts.get("delimiter", "," if csv else "\t")
        quote = opts.get("quote", '"')
        escape = opts.get("escape", quote)
        null = opts.get("null", "" if csv else "\\N")
        if not all(isinstance(x, str) and len(x) == 1 for x in (delimiter, quote, escape)) or not isinstance(null, str):
            return None
        return cls(csv, delimiter, null, quote, escape, opts.get("header", False) not in (False, "false", "off"))

    def spans(self, line: str) -> list[tuple[int, int]]:
        """Each field's (start, end) in ``line`` (its trailing newline excluded)."""
        end = len(line) - (1 if line.endswith("\n") else 0)
        if end and line[end - 1] == "\r" and self.csv:
            end -= 1
        out: list[tuple[int, int]] = []
        pos = 0
        while True:
            start = pos
            if self.csv and pos < end and line[pos] == self.quote:
                pos += 1
                while pos < end:
                    c = line[pos]
                    if c == self.escape and pos + 1 < end and line[pos + 1] in (self.quote, self.escape) and (
                            self.escape != self.quote or line[pos + 1] == self.quote):
                        pos += 2
                        continue
                    if c == self.quote:
                        pos += 1
                        break
                    pos += 1
            nxt = line.find(self.delimiter, pos, end)
            if nxt < 0:
                out.append((start, end))
                return out
            out.append((start, nxt))
            pos = nxt + 1

    def field(self, text: str | None) -> str:
        """A replacement as this format writes a field (None: NULL)."""
        if text is None:
            return self.null
        if self.csv:
            return self.quote + text.replace(self.quote, self.escape + self.quote) + self.quote
        out = text.replace("\\", "\\\\")
        for c, e in (("\n", "\\n"), ("\r", "\\r"), (self.delimiter, "\\" + self.delimiter)):
            out = out.replace(c, e)
        return out


def mask_line(line: str, fmt: CopyFormat, marks: Sequence[object] | None, fallback: object,
              replace: Replace) -> str | None:
    """``line`` with the fields ``marks`` names masked (None: every field, by ``fallback``);
    None when nothing changed."""
    spans = fmt.spans(line)
    parts: list[str] = []
    last = 0
    changed = False
    for i, (a, b) in enumerate(spans):
        rule = fallback if marks is None else (marks[i] if i < len(marks) else fallback)
        raw = line[a:b]
        if rule is None or (raw == fmt.null and fmt.null in ("\\N", "")):
            continue  # NULL (a NULL string of the client's choosing could equal a value: masked too)
        if fmt.csv and len(raw) >= 2 and raw[0] == fmt.quote:
            raw = raw[1:-1].replace(fmt.escape + fmt.quote, fmt.quote)
        parts += [line[last:a], fmt.field(replace(rule, raw))]
        last = b
        changed = True
    if not changed:
        return None
    parts.append(line[last:])
    return "".join(parts)
