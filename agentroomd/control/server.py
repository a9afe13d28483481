"""The control socket: bind it safely, accept same-user clients, and run each connection's request loop.

Binding (trio has no Unix listener helper, python-trio/trio#279): a socket file left by a daemon
that was killed is replaced, one that still answers is refused (the caller holds the home's lock, so
a live socket means something else owns this path). The bind happens under umask 0o177, so the
socket is 0600 from its first instant. Every accepted connection must come from our own uid
(SO_PEERCRED), in addition to the file mode (Tailscale's peercred rule).

Per connection: a bounded line reader, one request at a time in order, and one nursery that also
owns the connection's subscription pumps, so a client hanging up ends all of them. A bad client (garbage,
oversized lines, abrupt hang-up) only ever ends its own connection.
"""

import errno
import itertools
import os
import socket
import stat
import struct
from pathlib import Path
from typing import Any

import trio

from agentroomd.control import api
from agentroomd.control.connection import Connection, ConnectionGoneError, Gauge
from agentroomd.control.framing import MAX_LINE_BYTES, LineBuffer, LineTooLongError, decode, encode
from agentroomd.control.inbox import Inbox
from agentroomd.control.rpc import MethodRegistry, error_response
from agentroomd.log import Logger

LISTEN_BACKLOG = 64
RECEIVE_CHUNK = 65536


class ControlSocketError(Exception):
    """The control socket cannot be bound; the message says why and what to do."""


class PeerRejectedError(Exception):
    """A connection from another user."""


def peer_credentials(sock: trio.socket.SocketType | socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a connected Unix socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


def check_peer_uid(peer_uid: int, own_uid: int) -> None:
    """Only the daemon's own user may drive it; root is not special-cased (it can read our files anyway)."""
    if peer_uid != own_uid:
        raise PeerRejectedError(f"connection from uid {peer_uid} refused: agentroomd runs as uid {own_uid}")


def socket_is_live(path: Path) -> bool:
    """True when something accepts connections on ``path`` (a non-blocking connect, never waits)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)
    try:
        probe.connect(os.fspath(path))
    except BlockingIOError:
        return True  # a listener whose backlog is full: alive and busy
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return False
        raise
    finally:
        probe.close()
    return True


def bind_control_socket(path: Path, log: Logger) -> trio.SocketListener:
    """Bind and listen on ``path`` (0600); replaces a stale socket file, refuses a live one or a non-socket."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        info = None
    if info is not None:
        if not stat.S_ISSOCK(info.st_mode):
            raise ControlSocketError(f"{path} exists and is not a socket; move it away and start again")
        if socket_is_live(path):
            raise ControlSocketError(
                f"another process answers on the control socket {path}; stop it first (agentroomctl stop)"
            )
        path.unlink()
        log.info("control_stale_socket_removed", socket=str(path))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # Synchronous on purpose: the umask is process-wide, so no other task may run while it is narrowed.
        old_umask = os.umask(0o177)
        try:
            sock.bind(os.fspath(path))
        finally:
            os.umask(old_umask)
        sock.listen(LISTEN_BACKLOG)
    except OSError as exc:
        sock.close()
        raise ControlSocketError(f"cannot bind the control socket {path}: {exc.strerror or exc}") from exc
    return trio.SocketListener(trio.socket.from_stdlib_socket(sock))


def remove_socket_file(path: Path, identity: tuple[int, int]) -> None:
    """Unlink ``path`` if it is still the socket we bound (never someone else's)."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if (info.st_dev, info.st_ino) == identity:
        path.unlink(missing_ok=True)


class ControlServer:
    """The control socket service; `run` is started by the daemon's root nursery, last of all services."""

    def __init__(
        self, path: Path, methods: MethodRegistry, inbox: Inbox, log: Logger, max_clients: int, pumps: Gauge
    ) -> None:
        self.path = path
        self.methods = methods
        self.inbox = inbox
        self.log = log
        self.max_clients = max_clients
        self.pumps = pumps
        self.clients = 0
        self.in_flight = Gauge()
        self._ids = itertools.count(1)
        self.own_uid = os.getuid()

    def status(self) -> api.ControlStatus:
        return api.ControlStatus(clients=self.clients, subscriptions=self.inbox.subscriber_count)

    async def run(self, *, task_status: trio.TaskStatus["ControlServer"] = trio.TASK_STATUS_IGNORED) -> None:
        listener = bind_control_socket(self.path, self.log)
        info = self.path.lstat()
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(trio.serve_listeners, self._handle, [listener])
                self.log.info("control_listening", socket=str(self.path))
                task_status.started(self)
        finally:
            listener.socket.close()
            remove_socket_file(self.path, (info.st_dev, info.st_ino))

    async def drain(self) -> None:
        """Shutdown phase: refuse new work, end subscriptions, wait for running calls and pumps to finish."""
        self.methods.closing = True
        self.inbox.close(api.SHUTTING_DOWN, "agentroomd is shutting down")
        await self.in_flight.wait_zero()
        await self.pumps.wait_zero()

    async def _handle(self, stream: trio.SocketStream) -> None:
        connection_id = next(self._ids)
        try:
            pid, uid, _gid = peer_credentials(stream.socket)
            check_peer_uid(uid, self.own_uid)
        except (OSError, PeerRejectedError) as exc:
            self.log.warn("control_peer_rejected", connection=connection_id, reason=str(exc))
            await _refuse(stream, api.PERMISSION_DENIED, str(exc))
            return
        if self.clients >= self.max_clients:
            self.log.warn("control_too_many_clients", connection=connection_id, limit=self.max_clients)
            await _refuse(stream, api.LIMIT_EXCEEDED, f"too many control connections (limit {self.max_clients})")
            return
        self.clients += 1
        self.log.debug("control_connected", connection=connection_id, peer_pid=pid)
        try:
            async with trio.open_nursery() as nursery:
                connection = Connection(stream, connection_id, nursery, peer_pid=pid)
                try:
                    await self._serve(stream, connection)
                finally:
                    connection.end_subscriptions()
                    nursery.cancel_scope.cancel()
        except (ConnectionGoneError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away; its connection (and only that) ends
        except Exception as exc:  # a bug must cost one connection, never the daemon: log it and go on
            self.log.error("control_connection_failed", connection=connection_id, error=repr(exc))
        finally:
            self.clients -= 1
            self.log.debug("control_disconnected", connection=connection_id)
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _serve(self, stream: trio.SocketStream, connection: Connection) -> None:
        buffer = LineBuffer(MAX_LINE_BYTES)
        while True:
            try:
                line = buffer.next_line()
            except LineTooLongError:
                self.log.warn("control_line_too_long", connection=connection.connection_id, limit=MAX_LINE_BYTES)
                await connection.send(
                    error_response(None, api.INVALID_REQUEST, f"line longer than {MAX_LINE_BYTES} bytes; closing")
                )
                return
            if line is None:
                data = await stream.receive_some(RECEIVE_CHUNK)
                if not data:
                    if buffer.pending:
                        self.log.info("control_hangup_mid_line", connection=connection.connection_id)
                    return
                buffer.feed(data)
                continue
            if not line.strip():
                continue
            await self._answer(line, connection)

    async def _answer(self, line: bytes, connection: Connection) -> None:
        try:
            message: Any = decode(line)
        except ValueError as exc:
            await connection.send(error_response(None, api.PARSE_ERROR, f"invalid JSON: {exc}"[:300]))
            return
        self.in_flight.enter()
        try:
            response = await self.methods.dispatch(message, connection)
            if response is not None:
                await connection.send(response)
            connection.start_deferred()  # only what a successful call registered (failed calls drop theirs)
        finally:
            self.in_flight.leave()


async def _refuse(stream: trio.SocketStream, kind: api.ErrorKind, message: str) -> None:
    with trio.move_on_after(1):
        try:
            await stream.send_all(encode(error_response(None, kind, message)))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
    await stream.aclose()
