"""Prometheus metrics, in a dedicated CollectorRegistry (never prometheus_client's global one).

Session gauges and byte/statement totals are computed at scrape time from the session
registry (live sessions) plus the SessionTracker (ended ones), so the relay does no extra
work per message. The other parts report through small methods (the lead wires them):

- ``login_failed(reason)``: every refused login (AuthError.reason, or no_access,
  unknown_connection, too_many_sessions, upstream_failed, login_timeout, protocol_error)
  -> hoopd_login_failures_total{reason}
- ``statement(kind, decision)``: policy, once per decided statement -> hoopd_statements_total
- ``upstream_connected(connection, seconds)``: after each upstream login -> hoopd_upstream_connect_seconds
- ``journal_written(seconds, nbytes)`` / ``journal_failed()``: the journal writer
  -> hoopd_journal_write_seconds, hoopd_journal_bytes_total, hoopd_journal_errors_total
- ``policy_cache(hit)``: the policy parse cache -> hoopd_policy_cache_total{result}
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from hoopd.control.tracker import SessionTracker

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _SessionCollector:
    def __init__(self, sessions: Iterable[Any], tracker: SessionTracker) -> None:
        self.sessions = sessions
        self.tracker = tracker

    def collect(self) -> Iterator[Metric]:
        t = self.tracker
        active = GaugeMetricFamily("hoopd_sessions_active", "Live client sessions", labels=["connection", "level"])
        total = CounterMetricFamily("hoopd_sessions", "Client sessions begun (logged in and relaying)",
                                    labels=["connection", "level"])
        bin_ = CounterMetricFamily("hoopd_client_bytes_received", "Bytes received from clients",
                                   labels=["connection"])
        bout = CounterMetricFamily("hoopd_client_bytes_sent", "Bytes sent to clients", labels=["connection"])
        stmts = CounterMetricFamily("hoopd_session_statements", "Query and Execute messages relayed",
                                    labels=["connection"])
        denied = CounterMetricFamily("hoopd_denied_messages", "Client messages refused by a stage",
                                     labels=["connection"])
        live: dict[tuple[str, str], int] = {}
        bytes_in, bytes_out, count = (t.ended_bytes_in.copy(), t.ended_bytes_out.copy(), t.ended_statements.copy())
        for s in self.sessions:
            info = s.info
            conn = info.connection or ""
            live[(conn, info.level or "")] = live.get((conn, info.level or ""), 0) + 1
            bytes_in[conn] += info.bytes_in
            bytes_out[conn] += info.bytes_out
            count[conn] += info.statements
        for key in set(live) | set(t.started):
            active.add_metric(list(key), live.get(key, 0))
        for key, n in t.started.items():
            total.add_metric(list(key), n)
        for fam, values in ((bin_, bytes_in), (bout, bytes_out), (stmts, count), (denied, t.denied)):
            for conn, n in values.items():
                fam.add_metric([conn], n)
        yield from (active, total, bin_, bout, stmts, denied)


class Metrics:
    def __init__(self, sessions: Iterable[Any], tracker: SessionTracker) -> None:
        r = self.registry = CollectorRegistry()
        self._login_failures = Counter("hoopd_login_failures", "Refused logins", ["reason"], registry=r)
        self._statements = Counter("hoopd_statements", "Statements decided by policy", ["kind", "decision"],
                                   registry=r)
        self._upstream = Histogram("hoopd_upstream_connect_seconds", "Upstream connect and login time",
                                   ["connection"], registry=r)
        self._journal_write = Histogram("hoopd_journal_write_seconds", "Journal write time", registry=r,
                                        buckets=(.0001, .0005, .001, .005, .01, .05, .1, .5, 1, float("inf")))
        self._journal_bytes = Counter("hoopd_journal_bytes", "Bytes written to the journal", registry=r)
        self._journal_errors = Counter("hoopd_journal_errors", "Failed journal writes", registry=r)
        self._policy_cache = Counter("hoopd_policy_cache", "Policy parse cache lookups", ["result"], registry=r)
        self._admin = Counter("hoopd_admin_actions", "Admin actions (kill, reload) by channel", ["action", "via"],
                              registry=r)
        ProcessCollector(registry=r)
        r.register(_SessionCollector(sessions, tracker))

    def login_failed(self, reason: str) -> None:
        self._login_failures.labels(reason).inc()

    def statement(self, kind: str, decision: str) -> None:
        self._statements.labels(kind, decision).inc()

    def upstream_connected(self, connection: str, seconds: float) -> None:
        self._upstream.labels(connection).observe(seconds)

    def journal_written(self, seconds: float, nbytes: int) -> None:
        self._journal_write.observe(seconds)
        self._journal_bytes.inc(nbytes)

    def journal_failed(self) -> None:
        self._journal_errors.inc()

    def policy_cache(self, hit: bool) -> None:
        self._policy_cache.labels("hit" if hit else "miss").inc()

    def admin_action(self, action: str, via: str) -> None:
        self._admin.labels(action, via).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def login_failures(self) -> dict[str, int]:
        """reason -> count, for the console's ``stats``."""
        return {s.labels["reason"]: int(s.value) for fam in self._login_failures.collect()
                for s in fam.samples if s.name.endswith("_total")}
