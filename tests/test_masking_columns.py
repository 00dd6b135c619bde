"""Column rules without a server: the taint that marks computed result columns
(hoopd.masking.derive), rules resolved over a relation snapshot with views
(hoopd.masking.columns), type-preserving replacements (hoopd.masking.values), and the
stage's fail-closed paths."""
from __future__ import annotations

import struct
import uuid

import pytest
from hypothesis import given, strategies as st

from hoopd.masking.columns import ColumnMasks, parse
from hoopd.masking.derive import copies, derive
from hoopd.masking.relations import Relations
from hoopd.masking.rules import MaskRule, MaskingConfig
from hoopd.masking.stage import MaskingStage
from hoopd.masking.values import TEXT_LIKE, TYPED, masked_value
from hoopd.pgwire import messages as m
from hoopd.pgwire.conversation import Columns, Conversation
from hoopd.pgwire.types import BE
from hoopd.session import SessionInfo

PII = MaskRule("pii", columns=(("public", "people", "email"), ("*", "ssn")))
BYNAME = MaskRule("byname", columns=(("*secret*",),))
ROWS = [
    ("c", "16400", "1", "public", "people", "id"),
    ("c", "16400", "2", "public", "people", "email"),
    ("c", "16400", "3", "public", "people", "ssn"),
    ("c", "16400", "4", "public", "people", "note"),
    ("c", "16500", "1", "other", "people", "email"),  # same name, another schema: not named by the glob
    ("c", "16600", "1", "public", "v", "id"),
    ("c", "16600", "2", "public", "v", "contact"),
    ("c", "16600", "3", "public", "v", "shout"),
    ("v", "16600", None, None, None, "SELECT people.id, people.email AS contact, upper(people.note) AS shout"
                                     " FROM people"),
    ("c", "16700", "1", "public", "vv", "c2"),
    ("v", "16700", None, None, None, "SELECT v.contact AS c2 FROM v"),
]


def masks(*rules: MaskRule) -> ColumnMasks:
    return ColumnMasks(rules or (PII,), Relations.from_rows(ROWS))


def outputs(sql: str, cm: ColumnMasks | None = None) -> tuple:
    cm = cm or masks()
    d = derive(parse(sql)[0], cm, cm.fallback)
    return tuple(None if r is None else r.name for r in d.columns) if d.columns is not None else ("*", d.any)


@pytest.mark.parametrize("sql, expected", [
    ("select lower(email), id + 1, note || '' from people", ("pii", None, None)),
    ("select lower(p.email) from people p", ("pii",)),
    ("select lower(p.email) from other.people p", (None,)),  # the glob names public.people only
    ("select upper(ssn) from other.people", (None,)),  # (other.people has no ssn column)
    ("select row_to_json(p), count(*) from people p", ("pii", None)),
    ("select x || '' from (select email as x from people) s", ("pii",)),
    ("with c as (select * from people) select lower(c.email), length(c.note) from c", ("pii", None)),
    ("with c(a) as (select ssn || '' from people) select a || '' from c", ("pii",)),
    ("select 1 union select length(email) from people", ("pii",)),
    ("select (select email from people limit 1) || ''", ("pii",)),
    ("values (lower('a'), (select ssn from people limit 1))", (None, "pii")),
    ("select my_function(id) from people", ("pii",)),  # a user function may read a masked table
    ("select now()::text, current_user", (None, None)),
    ("insert into people (id) values (1) returning email || ''", ("pii",)),
    ("select lower(contact), upper(id::text) from v", ("pii", None)),
    ('with x as (select email || \'\' from people) select lower(x."?column?") from x', ("pii",)),
    ('with x as (select email || \'\' from people) select "?column?" || \'\' from x', ("pii",)),
    ("with x as (select lower(note) n from people) select n || '' from x", (None,)),  # nothing masked in x
])
def test_computed_columns_derive_from_masked_columns(sql, expected):
    assert outputs(sql) == expected


def test_a_star_over_a_derived_relation_marks_the_whole_result():
    assert outputs("select * from (select lower(email) from people) s")[0] == "*"
    assert outputs("select s.* from (select id from people) s") == ("*", None)


def test_views_and_views_of_views_resolve_to_their_source_columns():
    cm = masks()
    assert [r and r.name for r in (cm.table_rule(16600, 1), cm.table_rule(16600, 2), cm.table_rule(16600, 3))] == [
        None, "pii", None]
    assert cm.table_rule(16700, 1) is PII
    assert cm.table_rule(16400, 4) is None and cm.table_rule(16500, 1) is None


def test_unknown_tables_and_an_unread_catalog_fail_closed():
    cm = masks()
    assert cm.table_rule(99999, 1) is PII and cm.unknown == {99999}
    assert cm.table_rule(1262, 1) is None  # a system catalog (not a value view)
    blind = ColumnMasks((PII,), None)
    assert blind.table_rule(16400, 1) is PII and outputs("select length(note) from people", blind) == ("pii",)


def test_one_part_globs_also_match_computed_result_names():
    cm = masks(PII, BYNAME)
    plan = cm.plan(Columns(("my_secret", "other"), (25, 25), (0, 0), (0, 0), (0, 0)),
                   derive(parse("select 'x' as my_secret, 'y' as other")[0], cm))
    assert [r and r.name for r in plan] == ["byname", None]


@pytest.mark.parametrize("sql, refused", [
    ("insert into people (id, note) select id, email from people", True),
    ("insert into people (id, note) select id, note from people where email = 'x'", False),
    ("update people set note = ssn", True),
    ("update people set note = 'x' where ssn = '1'", False),
    ("create table t as select lower(email) from people", True),
    ("select ssn into t from people", True),
    ("copy people to stdout", False),  # (masked field by field: hoopd.masking.copyout)
    ("copy people to '/tmp/x'", True),
    ("copy (select id, note from people) to stdout", False),
    ("copy people from stdin", False),
    ("merge into people p using people q on p.id = q.id when matched then update set note = q.email", True),
    ("with x as (update people set note = email returning id) select * from x", True),
    ("explain analyze insert into people (note) select ssn from people", True),
    ("prepare p as update people set note = lower(email)", True),
    ("select set_config('a.b', email, false) from people", True),
    ("select set_config('a.b', 'on', false) from people where email = 'x'", False),
])
def test_statements_that_copy_masked_values(sql, refused):
    assert (copies(parse(sql)[0], masks()) is not None) == refused


@pytest.mark.parametrize("oid", sorted(TYPED | TEXT_LIKE))
@pytest.mark.parametrize("key", [None, b"k" * 32])
def test_replacements_are_values_of_the_column_type(oid, key):
    for fmt in (0, 1):
        raw = {21: b"\x00\x07", 23: b"\x00\x00\x00\x07", 20: b"\x00" * 7 + b"\x07", 26: b"\x00\x00\x00\x07",
               2950: uuid.uuid4().bytes, 1082: b"\x00\x00\x00\x07"}.get(oid, b"7") if fmt else b"7"
        new = masked_value(raw, oid, fmt, "utf-8", lambda t: "****", key)
        assert new is not None
        if oid in TEXT_LIKE:
            assert new == b"****"
        elif fmt == 0:
            assert new.decode()  # a literal of the type (checked against the server in the e2e test)
        else:
            size = {21: 2, 23: 4, 20: 8, 26: 4, 700: 4, 701: 8, 16: 1, 1082: 4, 1083: 8, 1114: 8, 1184: 8, 2950: 16}
            assert oid == 1700 or len(new) == size[oid]


def test_hash_is_the_same_for_a_value_in_text_and_binary():
    key = b"k" * 32
    assert masked_value(b"7777", 23, 0, "utf-8", str, key) == str(
        struct.unpack(">i", masked_value(struct.pack(">i", 7777), 23, 1, "utf-8", str, key))[0]).encode()
    u = uuid.uuid4()
    assert masked_value(str(u).encode(), 2950, 0, "utf-8", str, key).decode() == str(
        uuid.UUID(bytes=masked_value(u.bytes, 2950, 1, "utf-8", str, key)))


def test_other_types_and_the_null_strategy_become_null():
    assert masked_value(b"{a,b}", 1009, 0, "utf-8", lambda t: "x", None) is None  # text[]
    assert masked_value(b"abc", 25, 0, "utf-8", None, None) is None
    assert masked_value(b'{"a": 1}', 3802, 0, "utf-8", lambda t: "****", None) == b'"****"'


def _session(rule: MaskRule):
    info = SessionInfo("s1", "peer", 0.0, level="read_only", connection="c", database="d")
    conv = Conversation()
    stage = MaskingStage(MaskingConfig((rule,)))
    return stage.open(info, conv), conv


@given(st.lists(st.one_of(st.none(), st.binary(max_size=40)), min_size=1, max_size=6))
def test_rows_without_a_description_are_masked_whole_and_still_parse(values):
    s, conv = _session(PII)
    msg = conv.server(BE.DATA_ROW, m.encode_data_row(values))
    new = s.server(msg)
    out = m.decode_data_row(new if new is not None else msg.body)
    assert len(out) == len(values)
    assert all(v is None for v in out)  # types unknown: NULL, never the clear bytes


def test_do_and_call_are_opaque():
    cm = masks()
    assert copies(parse("do $$ begin insert into t select email from people; end $$")[0], cm) is PII
    assert copies(parse("call my_proc()")[0], cm) is PII
    from hoopd.masking.derive import opaque_calls, touches
    assert touches(parse("do $$ begin raise notice '%', 1; end $$")[0], cm) is PII
    assert opaque_calls(parse("select lower(note) from people")[0], cm) is None
    assert opaque_calls(parse("select my_fn(note) from people")[0], cm) is PII
    assert touches(parse("select 1 / 0")[0], cm) is None
