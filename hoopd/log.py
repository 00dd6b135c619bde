"""Loggers: txaio's make_logger over twisted.logger, with per-namespace levels from config.

``txaio.use_twisted()`` is called once here, before any logger exists. Never call
``txaio.start_logging()`` under twistd (twistd already began logging).
"""
from __future__ import annotations

from typing import Any, Mapping

import txaio

txaio.use_twisted()
import txaio.tx  # noqa: E402  (after use_twisted)

_levels: dict[str, str] = {}
_default = "info"
_loggers: list[tuple[str, Any]] = []


def _level_for(namespace: str) -> str:
    best, level = -1, _default
    for ns, lv in _levels.items():
        if (namespace == ns or namespace.startswith(ns + ".")) and len(ns) > best:
            best, level = len(ns), lv
    return level


def get_logger(namespace: str) -> Any:
    """A txaio logger for a dotted namespace such as ``hoopd.proxy``."""
    log = txaio.tx.Logger(level=_level_for(namespace), namespace=namespace, logger=txaio.tx._Logger)
    _loggers.append((namespace, log))
    return log


def configure(default: str, levels: Mapping[str, str]) -> None:
    """Apply config levels (also to loggers made before the config was read)."""
    global _default
    _default = default
    _levels.clear()
    _levels.update(levels)
    for ns, log in _loggers:
        log.set_log_level(_level_for(ns))


def tracing(log: Any) -> bool:
    """Whether a logger's trace level is on (to skip building trace arguments in hot paths);
    True for a logger that is not one of ours."""
    levels = txaio.tx.log_levels
    level = getattr(log, "_log_level", None)
    return level not in levels or levels.index(level) >= levels.index("trace")
