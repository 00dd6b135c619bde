"""Prometheus metrics, in a dedicated CollectorRegistry (never prometheus_client's global one).

Session gauges and byte/statement totals are computed at scrape time from the session
registry (live sessions) plus the SessionTracker (ended ones), so the relay does no extra
work per message. What is counted per statement or per journal record is kept in plain
ints (the reactor's thread is the only writer; prometheus_client's locked values cost
microseconds each) and exported at scrape time. Counters other parts already keep are
read at scrape time too:

- ``identity_failures``: a callable returning reason -> count (the identity chain's
  ``failures``), added into hoopd_login_failures_total{reason}
- ``policy_cache_stats``: a callable returning Classifier.stats() -> hoopd_policy_cache_total{result}

(both given to the constructor), and the rest report through small methods:

- ``login_failed(reason)``: refusals outside the identity chain (no_access,
  unknown_connection, too_many_sessions, upstream_failed, login_timeout)
- ``statement(kind, decision)``: policy, once per decided statement -> hoopd_statements_total
- ``masked(rule, strategy, spans)``: masking, per masked value -> hoopd_masked_values_total
- ``review(event, request)``: approvals -> hoopd_review_requests_total, _pending, hoopd_review_decision_seconds
- ``upstream_connected(connection, seconds)``: after each upstream login -> hoopd_upstream_connect_seconds
- ``journal_written(seconds, nbytes)`` / ``journal_failed()``: the journal writer's hooks
  -> hoopd_journal_write_seconds, hoopd_journal_bytes_total, hoopd_journal_errors_total;
  ``journal_anchored(anchor)`` -> hoopd_journal_anchor_records{node,segment,hash},
  hoopd_journal_anchor_timestamp_seconds
"""
from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from datetime import datetime
from typing import Any, Callable, Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client import Counter as PCounter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from hoopd.control.tracker import SessionTracker
from hoopd.journal.anchor import Anchor

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


_WRITE_BUCKETS = (.0001, .0005, .001, .005, .01, .05, .1, .5, 1.0)


class _Histogram:
    """A histogram without a lock, exported by the collector."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last one: +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.buckets, value)] += 1
        self.sum += value

    def family(self, name: str, doc: str) -> HistogramMetricFamily:
        cumulative, total = [], 0
        for le, n in zip((*map(str, self.buckets), "+Inf"), self.counts):
            total += n
            cumulative.append((le, total))
        return HistogramMetricFamily(name, doc, buckets=cumulative, sum_value=self.sum)


class _Collector:
    def __init__(self, sessions: Iterable[Any], tracker: SessionTracker, metrics: "Metrics") -> None:
        self.sessions = sessions
        self.tracker = tracker
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        yield from self._sessions()
        fails = CounterMetricFamily("hoopd_login_failures", "Refused logins", labels=["reason"])
        for reason, n in sorted(self.metrics.login_failures().items()):
            fails.add_metric([reason], n)
        yield fails
        if self.metrics.policy_cache_stats is not None:
            st = self.metrics.policy_cache_stats()
            cache = CounterMetricFamily("hoopd_policy_cache", "Statement classifications by cache outcome",
                                        labels=["result"])
            for result, key in (("exact_hit", "exact_hits"), ("shape_hit", "shape_hits"), ("miss", "parses")):
                cache.add_metric([result], st.get(key, 0))
            yield cache
        m = self.metrics
        stmts = CounterMetricFamily("hoopd_statements", "Statements decided by policy", labels=["kind", "decision"])
        for (kind, decision), n in sorted(m.statements.items()):
            stmts.add_metric([kind, decision], n)
        yield stmts
        masked = CounterMetricFamily("hoopd_masked_values", "Values (spans) masked, by rule and strategy",
                                     labels=["rule", "strategy"])
        for (rule, strategy), n in sorted(m.masked_values.items()):
            masked.add_metric([rule, strategy], n)
        yield masked
        yield m.journal_write.family("hoopd_journal_write_seconds", "Journal write time")
        written = CounterMetricFamily("hoopd_journal_bytes", "Bytes written to the journal")
        written.add_metric([], m.journal_bytes)
        yield written

    def _sessions(self) -> Iterator[Metric]:
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
        live: Counter[tuple[str, str]] = Counter()
        bytes_in, bytes_out, count = t.ended_bytes_in.copy(), t.ended_bytes_out.copy(), t.ended_statements.copy()
        for s in self.sessions:
            info = s.info
            conn = info.connection or ""
            live[(conn, info.level or "")] += 1
            bytes_in[conn] += info.bytes_in
            bytes_out[conn] += info.bytes_out
            count[conn] += info.statements
        for key in set(live) | set(t.started):
            active.add_metric(list(key), live[key])
        for key, n in t.started.items():
            total.add_metric(list(key), n)
        for fam, values in ((bin_, bytes_in), (bout, bytes_out), (stmts, count), (denied, t.denied)):
            for conn, n in values.items():
                fam.add_metric([conn], n)
        yield from (active, total, bin_, bout, stmts, denied)


class Metrics:
    def __init__(self, sessions: Iterable[Any], tracker: SessionTracker,
                 identity_failures: Callable[[], Mapping[str, int]] | None = None,
                 policy_cache_stats: Callable[[], Mapping[str, int]] | None = None) -> None:
        r = self.registry = CollectorRegistry()
        self.identity_failures = identity_failures
        self.policy_cache_stats = policy_cache_stats
        self._login_failures: Counter[str] = Counter()
        self.statements: Counter[tuple[str, str]] = Counter()  # (kind, decision) -> statements
        self.activity: Any = None  # hoopd.control.activity.Activity: per-minute counts for the console
        self.masked_values: Counter[tuple[str, str]] = Counter()  # (rule, strategy) -> spans masked
        self._upstream = Histogram("hoopd_upstream_connect_seconds", "Upstream connect and login time",
                                   ["connection"], registry=r)
        self.journal_write = _Histogram(_WRITE_BUCKETS)
        self.journal_bytes = 0
        self._journal_errors = PCounter("hoopd_journal_errors", "Failed journal writes", registry=r)
        self._anchor = Gauge("hoopd_journal_anchor_records", "The journal chain's last anchor: records of its"
                             " segment up to the anchored one (labels: segment and hash)", ["node", "segment", "hash"],
                             registry=r)
        self._anchor_time = Gauge("hoopd_journal_anchor_timestamp_seconds", "When the chain was last anchored",
                                  registry=r)
        self._admin = PCounter("hoopd_admin_actions", "Admin actions (kill, reload) by channel", ["action", "via"],
                               registry=r)
        self._reviews = PCounter("hoopd_review_requests", "Review requests by event (requested, approval,"
                                 " approved, denied, expired, withdrawn)", ["event"], registry=r)
        self._review_pending = Gauge("hoopd_review_requests_pending", "Statements held for review now",
                                     registry=r)
        self._review_wait = Histogram("hoopd_review_decision_seconds", "Time from request to its end, by outcome",
                                      ["outcome"], buckets=(5, 30, 60, 300, 900, 1800, 3600), registry=r)
        self._tripwire = PCounter("hoopd_tripwire_sessions_ended",
                                  "Sessions ended because the server reported a setting the checks rely on changed",
                                  ["setting"], registry=r)
        ProcessCollector(registry=r)
        r.register(_Collector(sessions, tracker, self))

    def login_failed(self, reason: str) -> None:
        self._login_failures[reason] += 1

    def masked(self, rule: str, strategy: str, spans: int) -> None:
        self.masked_values[(rule, strategy)] += spans

    def statement(self, kind: str, decision: str) -> None:
        self.statements[(kind, decision)] += 1
        if self.activity is not None:
            self.activity.statement(decision)

    def upstream_connected(self, connection: str, seconds: float) -> None:
        self._upstream.labels(connection).observe(seconds)

    def journal_written(self, seconds: float, nbytes: int) -> None:
        self.journal_write.observe(seconds)
        self.journal_bytes += nbytes

    def journal_failed(self) -> None:
        self._journal_errors.inc()

    def journal_anchored(self, anchor: Anchor) -> None:
        self._anchor.clear()  # one series: the newest anchor
        self._anchor.labels(anchor.node, anchor.segment, anchor.hash).set(anchor.records)
        self._anchor_time.set(datetime.fromisoformat(anchor.ts.replace("Z", "+00:00")).timestamp())

    def admin_action(self, action: str, via: str) -> None:
        self._admin.labels(action, via).inc()

    def review(self, event: str, request: Any) -> None:
        """A Reviews listener (hoopd.review.requests)."""
        self._reviews.labels(event).inc()
        if event == "requested":
            self._review_pending.inc()
        elif event != "approval":
            self._review_pending.dec()
            self._review_wait.labels(event).observe(max(0.0, (request.decided or 0.0) - request.requested))

    def tripwire(self, setting: str) -> None:
        self._tripwire.labels(setting).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def login_failures(self) -> dict[str, int]:
        """reason -> count, from every source."""
        total = self._login_failures.copy()
        if self.identity_failures is not None:
            total.update(self.identity_failures())
        return dict(total)


SESSION_FAMILIES = ("hoopd_sessions_active", "hoopd_sessions", "hoopd_client_bytes_received",
                    "hoopd_client_bytes_sent", "hoopd_session_statements")  # the supervisor counts these itself


def merge_metrics(own: bytes, workers: list[tuple[int, bytes]]) -> bytes:
    """One exposition of the supervisor's metrics and its workers' (their samples get a
    ``worker`` label; families the supervisor counts itself from its registry are
    taken from it alone)."""
    families: dict[str, tuple[list[str], list[str]]] = {}  # name -> (HELP/TYPE lines, samples)

    def add(text: bytes, label: str | None) -> None:
        name = None
        for line in text.decode().splitlines():
            if line.startswith("# "):
                parts = line.split(" ", 3)
                name = parts[2]
                head, _ = families.setdefault(name, ([], []))
                if line not in head:
                    head.append(line)
                continue
            if not line or name is None:
                continue
            if label is not None and name in SESSION_FAMILIES:
                continue
            if label is not None:
                brace = line.find("{")
                space = line.find(" ")
                if brace != -1 and brace < space:
                    line = f'{line[:brace + 1]}worker="{label}",{line[brace + 1:]}'
                else:
                    line = f'{line[:space]}{{worker="{label}"}}{line[space:]}'
            families[name][1].append(line)

    add(own, None)
    for index, text in workers:
        add(text, str(index))
    out = []
    for head, samples in families.values():
        out += head + samples
    return ("\n".join(out) + "\n").encode()
