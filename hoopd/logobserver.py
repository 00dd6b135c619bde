"""A log observer for systemd: ``twistd --logger=hoopd.logobserver.observer ...``.

Each line goes to stdout with a ``<N>`` syslog priority prefix, which journald reads
as the entry's priority (SyslogLevelPrefix=, on by default); no timestamps, journald
adds its own. Lines of a multi-line event (tracebacks) each carry the prefix.
"""
from __future__ import annotations

import sys
from typing import IO

from twisted.logger import FileLogObserver, ILogObserver, LogEvent, LogLevel, eventAsText

PRIORITY = {LogLevel.critical: 2, LogLevel.error: 3, LogLevel.warn: 4, LogLevel.info: 6, LogLevel.debug: 7}


def format_event(event: LogEvent) -> str | None:
    """``<N>[namespace] text`` lines for one event, or None when there is nothing to say."""
    text = eventAsText(event, includeTimestamp=False, includeSystem=False)
    if not text:
        return None
    level = event.get("log_level")
    prio = PRIORITY.get(level, 3 if event.get("isError") else 6)
    ns = event.get("log_namespace")
    head = f"<{prio}>[{ns}] " if ns and ns != "log_legacy" else f"<{prio}>"
    return "".join(head + line + "\n" for line in text.splitlines())


def observer(out: IO[str] | None = None) -> ILogObserver:
    """The factory twistd calls. stdout is captured now: twistd replaces sys.stdout later."""
    return FileLogObserver(out or sys.stdout, format_event)
