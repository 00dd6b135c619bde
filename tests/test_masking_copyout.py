"""COPY TO STDOUT lines split into fields and masked (hoopd.masking.copyout)."""
from __future__ import annotations

from hypothesis import given, strategies as st

from hoopd.masking.copyout import CopyFormat, mask_line
from hoopd.masking.columns import parse

TEXT, CSV = CopyFormat(), CopyFormat(csv=True, delimiter=",", null="")


def masked(line: str, fmt: CopyFormat, marks) -> str | None:
    return mask_line(line, fmt, marks, "R", lambda rule, text: f"<{text}>")


def test_text_format_fields_and_escapes():
    line = "1\tada@x\\tb\t\\N\tnote\n"
    assert TEXT.spans(line) == [(0, 1), (2, 10), (11, 13), (14, 18)]
    assert masked(line, TEXT, (None, "R", "R", None)) == "1\t<ada@x\\\\tb>\t\\N\tnote\n"  # NULL stays NULL
    assert masked(line, TEXT, (None, None, None, None)) is None
    assert masked(line, TEXT, None) == "<1>\t<ada@x\\\\tb>\t\\N\t<note>\n"  # order unknown: every field


def test_csv_quotes_delimiters_and_newlines_inside_fields():
    line = '1,"a,b ""c""\nd",,x\n'
    assert [line[a:b] for a, b in CSV.spans(line)] == ["1", '"a,b ""c""\nd"', "", "x"]
    assert masked(line, CSV, (None, "R", "R", None)) == '1,"<a,b ""c""\nd>",,x\n'
    esc = CopyFormat(csv=True, delimiter="|", quote="~", escape="\\")
    assert esc.spans("~a\\~|b~|c\n") == [(0, 7), (8, 9)]


def test_options_read_from_the_statement():
    (stmt,) = parse("copy t to stdout (format csv, delimiter ';', null 'NULL', header)")
    assert CopyFormat.of(stmt) == CopyFormat(True, ";", "NULL", '"', '"', True)
    assert CopyFormat.of(parse("copy t to stdout")[0]) == TEXT
    assert CopyFormat.of(parse("copy t to stdout (encoding 'latin1')")[0]) is None


@given(st.lists(st.text(alphabet='ab,"\n\t\\x', max_size=8), min_size=1, max_size=6))
def test_masking_keeps_the_number_of_fields(values):
    line = ",".join('"' + v.replace('"', '""') + '"' for v in values) + "\n"
    out = masked(line, CSV, ("R",) * len(values))
    assert out is not None and len(CSV.spans(out)) == len(values)


def test_a_null_string_of_the_clients_choosing_does_not_unmask_a_value():
    fmt = CopyFormat(null="ada@x")
    assert masked("1\tada@x\n", fmt, (None, "R")) == "1\t<ada@x>\n"
