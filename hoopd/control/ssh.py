"""The SSH admin console: public keys only, an interactive shell, and exec mode.

Keys come from ``[control].ssh_authorized_keys``, lines of ``NAME KEYTYPE KEY [comment]``,
re-read at every login (deleting a line revokes that key for new logins); while group or
others could write the file (hoopd.filecheck), no key in it is accepted. The SSH user
name must be the line's NAME; it is who admin actions are attributed to (``ssh:NAME``).
The host key is Ed25519, made once in ``[gateway].state_dir`` (0600).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.conch import avatar, error as conch_error
from twisted.conch.insults import insults
from twisted.conch.interfaces import IConchUser, ISession
from twisted.conch.recvline import HistoricRecvLine
from twisted.conch.ssh import factory, keys, session
from twisted.cred import portal
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import ISSHPrivateKey
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer, error as net_error
from twisted.python import components
from twisted.python.failure import Failure
from zope.interface import implementer

from hoopd.confkit import ConfigError
from hoopd.control.console import Console
from hoopd.control.plane import ControlPlane
from hoopd.filecheck import access_file_problem
from hoopd.log import get_logger

log = get_logger("hoopd.control.ssh")
HOST_KEY = "ssh_host_ed25519_key"
CTRL_C, CTRL_D, CTRL_L = b"\x03", b"\x04", b"\x0c"


# --- keys -------------------------------------------------------------------------------

def host_key(state_dir: str) -> keys.Key:
    """The console's host key, generated on first use. Raises ConfigError when unusable."""
    path = Path(state_dir) / HOST_KEY
    try:
        if not path.exists():
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            pem = keys.Key(Ed25519PrivateKey.generate()).toString("OPENSSH")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
            log.info("SSH console: new host key {path} ({fp})", path=str(path),
                     fp="SHA256:" + keys.Key.fromFile(str(path)).fingerprint(keys.FingerprintFormats.SHA256_BASE64))
        if path.stat().st_mode & 0o077:
            raise ConfigError("gateway.state_dir", f"{path} is readable by others; chmod 600 it")
        return keys.Key.fromFile(str(path))
    except OSError as e:
        raise ConfigError("gateway.state_dir", f"SSH host key {path}: {e.strerror}") from None
    except keys.BadKeyError as e:
        raise ConfigError("gateway.state_dir", f"SSH host key {path}: {e}") from None


def read_authorized_keys(path: str) -> list[tuple[str, keys.Key]]:
    """(name, key) for every usable line; bad lines are logged and skipped."""
    found = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts or parts[0].startswith("#"):
                continue
            try:
                if len(parts) < 3:
                    raise keys.BadKeyError("expected NAME KEYTYPE KEY [comment]")
                found.append((parts[0], keys.Key.fromString(f"{parts[1]} {parts[2]}".encode())))
            except (keys.BadKeyError, ValueError) as e:
                log.warn("{path}:{n}: skipped: {err}", path=path, n=n, err=str(e) or "not a public key")
    return found


class AdminId(bytes):
    """The avatar id: the admin's name, carrying the fingerprint of the key that logged in."""

    fingerprint: str


@implementer(ICredentialsChecker)
class AdminKeyChecker:
    credentialInterfaces = (ISSHPrivateKey,)

    def __init__(self, keys_file: Callable[[], str | None]) -> None:
        self.keys_file = keys_file

    def requestAvatarId(self, credentials: Any) -> defer.Deferred[AdminId]:
        name = credentials.username.decode("utf-8", "replace")
        path = self.keys_file()
        problem = access_file_problem(path) if path else None
        try:
            mine = [k for n, k in read_authorized_keys(path) if n == name] if path and not problem else []
        except OSError as e:
            log.error("SSH console: cannot read {path}: {err}", path=path, err=e.strerror)
            mine = []
        if problem:
            log.error("SSH console: no key accepted: {problem}", problem=problem)
        for key in mine:
            if key.blob() != credentials.blob:
                continue
            if credentials.signature is None:  # the client asks whether this key would do
                return defer.fail(conch_error.ValidPublicKey())
            if key.verify(credentials.signature, credentials.sigData):
                aid = AdminId(credentials.username)
                aid.fingerprint = "SHA256:" + key.fingerprint(keys.FingerprintFormats.SHA256_BASE64)
                return defer.succeed(aid)
        if credentials.signature is not None or not mine:
            log.info("SSH console: key refused for {name!r}", name=name)
        return defer.fail(UnauthorizedLogin("key not authorized"))


# --- avatar and sessions ----------------------------------------------------------------

class AdminAvatar(avatar.ConchUser):
    def __init__(self, plane: ControlPlane, aid: AdminId) -> None:
        super().__init__()
        self.plane = plane
        self.name = aid.decode("utf-8", "replace")
        self.fingerprint = aid.fingerprint
        self.channelLookup[b"session"] = session.SSHSession


@implementer(portal.IRealm)
class ConsoleRealm:
    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane

    def requestAvatar(self, avatar_id: AdminId, mind: Any, *interfaces: Any) -> tuple[Any, Any, Callable[[], None]]:
        if IConchUser not in interfaces:
            raise NotImplementedError("only SSH")
        av = AdminAvatar(self.plane, avatar_id)
        log.info("SSH console: {name} logged in (key {fp})", name=av.name, fp=av.fingerprint)
        return IConchUser, av, lambda: log.info("SSH console: {name} logged out", name=av.name)


class _Glue:
    """A minimal transport: write and loseConnection callables."""

    def __init__(self, write: Callable[[bytes], None], lose: Callable[[], None]) -> None:
        self.write = write
        self.loseConnection = lose

    def writeSequence(self, data: list[bytes]) -> None:
        self.write(b"".join(data))

    def closeStdin(self) -> None:
        pass


class ConsoleShell(HistoricRecvLine):
    """The interactive shell: line editing and history from HistoricRecvLine."""

    ps = (b"hoopd> ", b"...> ")

    def __init__(self, make_console: Callable[[Callable[[str], None]], Console]) -> None:
        super().__init__()
        self.console = make_console(self._out)
        self.busy = False

    def _out(self, text: str) -> None:
        self.terminal.write(text.replace("\n", "\r\n").encode("utf-8", "replace"))

    def connectionMade(self) -> None:
        super().connectionMade()
        self.keyHandlers.update({CTRL_C: self.handle_INT, CTRL_D: self.handle_EOF, CTRL_L: self.handle_FF})

    def initializeScreen(self) -> None:
        self.terminal.reset()
        node = self.console.plane.config.gateway.node
        self._out(f"hoopd console on {node}; you are {self.console.who}. Type help for commands.\n")
        self.terminal.write(self.ps[self.pn])
        self.setInsertMode()
        self.console.watch_reviews(self._announce)

    def _announce(self, text: str) -> None:
        """A review event, live: printed above the line being typed, which is then redrawn."""
        self.terminal.write(b"\r")
        self.terminal.eraseLine()
        self._out(text)
        if not self.busy:
            self.terminal.write(self.ps[self.pn] + b"".join(self.lineBuffer))

    def connectionLost(self, reason: Any) -> None:
        self.console.unwatch_reviews()
        super().connectionLost(reason)

    def terminalSize(self, width: int, height: int) -> None:
        self.width, self.height = width, height  # no redraw: it would wipe what is on screen

    def keystrokeReceived(self, keyID: bytes, modifier: Any) -> None:
        if self.busy:  # a command (tail -f) owns the screen until Ctrl-C
            if keyID == CTRL_C:
                self.console.interrupt()
            return
        super().keystrokeReceived(keyID, modifier)

    def handle_INT(self) -> None:
        self.lineBuffer, self.lineBufferIndex = [], 0
        self.terminal.write(b"^C")
        self.terminal.nextLine()
        self.terminal.write(self.ps[self.pn])

    def handle_EOF(self) -> None:
        if self.lineBuffer:
            return
        self.terminal.nextLine()
        self.terminal.loseConnection()

    def handle_FF(self) -> None:
        self.terminal.eraseDisplay()
        self.terminal.cursorHome()
        self.drawInputLine()

    def lineReceived(self, line: bytes) -> None:
        self.busy = True
        d = self.console.run(line.decode("utf-8", "replace"))
        d.addCallback(self._done)

    def _done(self, status: int) -> None:
        self.busy = False
        if self.console.finished:
            self.terminal.loseConnection()
        else:
            self.terminal.write(self.ps[self.pn])


def _exit(proto: Any, status: int) -> None:
    """Send exit-status and close the channel."""
    end = net_error.ProcessDone(0) if status == 0 else net_error.ProcessTerminated(exitCode=status)
    proto.processEnded(Failure(end))


@implementer(ISession)
class ConsoleSession(components.Adapter):
    """One SSH session channel of an AdminAvatar: a shell or one exec'd command."""

    original: AdminAvatar

    def __init__(self, avatar: AdminAvatar) -> None:
        super().__init__(avatar)
        self.size = (24, 80)
        self.console: Console | None = None
        self.terminal: insults.ServerProtocol | None = None

    def _console(self, proto: Any, write: Callable[[str], None],
                 write_error: Callable[[str], None] | None = None) -> Console:
        av = self.original
        peer = proto.getPeer()
        addr = getattr(getattr(peer, "address", peer), "host", "?")
        self.console = Console(av.plane, f"ssh:{av.name}", f"{av.name} (ssh key {av.fingerprint}) from {addr}",
                               write, write_error)
        return self.console

    def getPty(self, term: bytes, windowSize: tuple[int, ...], modes: Any) -> None:
        self.size = (windowSize[0], windowSize[1])

    def openShell(self, proto: Any) -> None:
        term = self.terminal = insults.ServerProtocol(ConsoleShell, lambda write: self._console(proto, write))
        proto.makeConnection(_Glue(term.dataReceived, lambda: None))
        term.makeConnection(_Glue(proto.write, lambda: _exit(proto, 0)))
        term.terminalProtocol.terminalSize(self.size[1], self.size[0])

    def execCommand(self, proto: Any, command: bytes) -> None:
        console = self._console(proto, lambda text: proto.write(text.encode("utf-8", "replace")),
                                lambda text: proto.errReceived(text.encode("utf-8", "replace")))
        proto.makeConnection(_Glue(lambda data: None, lambda: None))  # stdin is ignored

        def start() -> None:  # one tick later: closing inside execCommand breaks clients
            console.run(command.decode("utf-8", "replace")).addCallback(lambda status: _exit(proto, status))

        self.original.plane.reactor.callLater(0, start)

    def windowChanged(self, newWindowSize: tuple[int, ...]) -> None:
        self.size = (newWindowSize[0], newWindowSize[1])
        if self.terminal is not None and self.terminal.terminalProtocol is not None:
            self.terminal.terminalProtocol.terminalSize(self.size[1], self.size[0])

    def eofReceived(self) -> None:
        pass  # exec: the command runs to its end; shell: Ctrl-D or quit ends it

    def closed(self) -> None:
        if self.console is not None:
            self.console.interrupt()


components.registerAdapter(ConsoleSession, AdminAvatar, ISession)


class ConsoleFactory(factory.SSHFactory):
    noisy = False

    def __init__(self, plane: ControlPlane, key: keys.Key) -> None:
        self.portal = portal.Portal(ConsoleRealm(plane),
                                    [AdminKeyChecker(lambda: plane.config.control.ssh_authorized_keys)])
        self.publicKeys = {key.sshType(): key.public()}
        self.privateKeys = {key.sshType(): key}


def make_factory(plane: ControlPlane) -> ConsoleFactory:
    """The SSH listener's factory; raises ConfigError when the host key cannot be had."""
    return ConsoleFactory(plane, host_key(plane.config.gateway.state_dir))
