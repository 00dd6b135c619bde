"""The worker process's entry point (hoopd.workers.supervisor starts it, never a user):

    python -m hoopd.workers.run --config FILE --index N --fd 3 --family inet

Logs go to stderr (the supervisor's own), the AMP channel is stdin/stdout.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys

from twisted.internet import stdio
from twisted.logger import FileLogObserver, formatEventAsClassicLogText, globalLogBeginner

from hoopd.config import load
from hoopd.confkit import ConfigError
from hoopd.log import configure
from hoopd.tap import GatewayService
from hoopd.workers import protocol as p
from hoopd.workers.child import FAMILIES, WorkerLink, WorkerRole


def _args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m hoopd.workers.run",
                                 description="one hoopd worker (started by the supervisor)")
    ap.add_argument("--config", required=True)
    ap.add_argument("--index", type=int, required=True)
    ap.add_argument("--fd", type=int, required=True)
    ap.add_argument("--mcp-fd", type=int, help="the MCP ticket listener (when [mcp] is on)")
    ap.add_argument("--family", choices=sorted(FAMILIES), required=True)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    from twisted.internet import reactor

    def line(event: dict) -> str | None:  # "<time> [w<N> namespace#level] text": which worker said it
        text = formatEventAsClassicLogText(event)
        return text.replace(" [", f" [w{args.index} ", 1) if text else None
    globalLogBeginner.beginLoggingTo([FileLogObserver(sys.stderr, line)], redirectStandardIO=False)
    try:
        config = load(args.config)
    except ConfigError as e:
        print(f"hoopd worker {args.index}: {e}", file=sys.stderr)
        return 2
    configure(config.logging.level, config.logging.levels)
    link = WorkerLink(args.index, reactor)
    gw = GatewayService(config, reactor, worker=WorkerRole(args.index, args.fd, FAMILIES[args.family], link,
                                                           args.mcp_fd))
    link.gateway = gw
    gw.privilegedStartService()
    gw.startService()
    stdio.StandardIO(link, reactor=reactor)
    reactor.addSystemEventTrigger("before", "shutdown", gw.stopService)
    signal.signal(signal.SIGHUP, lambda *_: reactor.callFromThread(gw.reload, "SIGHUP"))
    link.send(p.Hello, index=args.index, pid=os.getpid())
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
