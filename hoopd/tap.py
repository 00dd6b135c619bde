"""twistd plugin entry: ``twistd -n hoopd --config FILE`` builds the service tree."""
from __future__ import annotations

from typing import Any

from twisted.application import service, strports
from twisted.python import usage

from hoopd.config import Config, load
from hoopd.confkit import ConfigError
from hoopd.log import configure, get_logger
from hoopd.proxy.client import GatewayFactory
from hoopd.proxy.registry import SessionRegistry

log = get_logger("hoopd.tap")


class Options(usage.Options):
    synopsis = "--config FILE"
    longdesc = "Run the hoopd gateway (PostgreSQL listener, control port, SSH console)."
    optParameters = [["config", "c", "/etc/hoopd/hoopd.toml", "path to the hoopd TOML config"]]

    def postOptions(self) -> None:
        try:
            self["loaded"] = load(self["config"])
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None


class GatewayService(service.MultiService):
    """The root of the tree: owns the registry and the postgres factory."""

    def __init__(self, config: Config, reactor: Any) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.registry = SessionRegistry()
        self.factory = GatewayFactory(config, self.registry, reactor)
        strports.service(config.listen.postgres, self.factory).setServiceParent(self)


def makeService(options: Options) -> service.IService:
    from twisted.internet import reactor

    config: Config = options["loaded"]
    configure(config.logging.level, config.logging.levels)
    log.info("hoopd starting: node {node}, {n} connections, postgres on {ep}", node=config.gateway.node,
             n=len(config.connections), ep=config.listen.postgres)
    return GatewayService(config, reactor)
