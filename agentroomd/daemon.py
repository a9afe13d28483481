"""`agentroomd [run] [--home DIR] [--config FILE]`: one trio program per identity, read top-down here.

    main
    ├── paths + config            (agentroomd.config: bad config -> exit 2, naming file and key)
    ├── the home's lock           (agentroomd.lockfile: a second daemon -> exit 3)
    ├── the identity              (agentroomd.identity_store: created on first start, never replaced)
    └── trio.run(run_daemon)
        └── root nursery
            ├── signals           first SIGTERM/SIGINT/SIGHUP: graceful stop; second: cancel everything now
            ├── watchdog          WATCHDOG=1 to systemd every half $WATCHDOG_USEC (only when asked)
            ├── services          each `await root.start(...)`, in dependency order (see `start_services`)
            └── control socket    last: "the socket answers" means "every service is ready"
                                  (bound here, or the one systemd passed us with socket activation)
            then: READY=1 -> wait for a stop request -> STOPPING=1 -> shutdown hooks under
                  [daemon] shutdown_grace_s -> cancel

Under systemd (Type=notify) the daemon says READY=1 with a STATUS= line once the control socket
answers, STOPPING=1 when it starts to stop; everything systemd-related is a no-op elsewhere.

Exit codes: 0 stopped cleanly, 1 failed (the last log line says why), 2 bad usage or config,
3 another agentroomd already runs for this home.
"""

import argparse
import os
import signal
import socket
import sys
import traceback
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import trio

from agentroomd import handlers
from agentroomd.client.service import run_sessions
from agentroomd.client.store import StoreError, StoreFlushError
from agentroomd.config import Config, ConfigError, Paths, env_overrides, load_config, prepare_dirs, resolve_paths
from agentroomd.context import DaemonContext, Service, Shutdown
from agentroomd.control.connection import Gauge
from agentroomd.control.inbox import Inbox, MemoryJournal
from agentroomd.control.methods import register_daemon_methods
from agentroomd.control.rpc import MethodRegistry
from agentroomd.control.server import ControlServer, ControlSocketError
from agentroomd.control.subscriptions import register_subscription_methods
from agentroomd.handlers import limits_from_table
from agentroomd.identity_store import IdentityStoreError, load_or_create_identity
from agentroomd.lockfile import AlreadyRunningError, HomeLock
from agentroomd.log import Logger, short_pk
from agentroomd.relay.config import RelayConfigError, relay_config_from
from agentroomd.rooms import run_rooms
from agentroomd.systemd import (
    SystemdError,
    activated_control_socket,
    notify_ready,
    notify_stopping,
    run_watchdog,
    watchdog_period,
)
from agentroomd.tunnel import TunnelConfig, TunnelError
from ratchet.identity import Identity

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_ALREADY_RUNNING = 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="agentroomd",
        description="The agentroom daemon: runs in the foreground, logs NDJSON to stderr, stops on SIGTERM, SIGINT or "
        "SIGHUP.",
        epilog="exit codes: 0 stopped cleanly, 1 failed, 2 bad usage or config, 3 already running for this home",
    )
    parser.add_argument("command", nargs="?", choices=["run"], default="run", help="run the daemon (the default)")
    parser.add_argument("--home", help="keep config, state and control socket under DIR (default: $AGENTROOM_HOME)")
    parser.add_argument("--config", help="read this config file instead of the home's agentroom.toml")
    parser.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)  # agentroomctl autostart: "ready\n" here
    args = parser.parse_args(argv)
    # Every file the daemon creates is private (client.db holds the sessions' keys), whatever umask the shell
    # that autostarted us had: the same UMask=0077 as the systemd unit. Handlers get the umask we were
    # started with back: they are the user's agents, creating the user's files.
    handlers.set_child_umask(os.umask(0o077))

    log = Logger("agentroomd")
    try:
        paths = resolve_paths(args.home, args.config)
        config = load_config(paths.config_file)
        check_service_tables(paths, config)
        prepare_dirs(paths)
    except ConfigError as exc:
        log.error("config_invalid", error=str(exc))
        return EXIT_USAGE
    log = Logger("agentroomd", level=config.daemon.log_level)
    try:
        with HomeLock(paths.lock_file):
            identity, created = load_or_create_identity(paths.identity_file)
            if created:
                log.info("identity_created", pk=short_pk(identity.pk), file=str(paths.identity_file))
            trio.run(run_daemon, paths, config, identity, log, args.ready_fd)
    except AlreadyRunningError as exc:
        log.error("already_running", error=str(exc), pid=exc.pid, socket=str(paths.socket_path))
        return EXIT_ALREADY_RUNNING
    except (IdentityStoreError, OSError) as exc:
        log.error("startup_failed", error=str(exc))
        return EXIT_FAILED
    except Exception as exc:
        return _report_failure(log, exc)
    return EXIT_OK


def check_service_tables(paths: Paths, config: Config, env: Mapping[str, str] | None = None) -> None:
    """Structure the tables other modules own now, so a typo stops the daemon at start, naming the file.

    The services' own variables (PORT, HMAC_SECRET, ...) are left out here: each service applies them
    when it starts. Our `AGENTROOM_<SECTION>_<KEY>` overrides are already in the tables, so an error
    names them beside the file: the bad value may well be theirs.
    """
    checks: tuple[tuple[str, Callable[[], object]], ...] = (
        ("relay", lambda: relay_config_from(config.relay, env={}, state_dir=paths.state_dir)),
        ("handlers", lambda: limits_from_table(config.handlers)),
        ("tunnel", lambda: TunnelConfig.from_table(config.tunnel)),
    )
    for section, check in checks:
        try:
            check()
        except (RelayConfigError, TunnelError, ValueError) as exc:
            variables = sorted(
                variable
                for (name, _key), (variable, _value) in env_overrides(os.environ if env is None else env).items()
                if name == section
            )
            where = str(paths.config_file)
            if variables:
                where += f" (with environment variable {', '.join(variables)})"
            raise ConfigError(f"{where}: {exc}") from exc


async def run_daemon(paths: Paths, config: Config, identity: Identity, log: Logger, ready_fd: int | None) -> None:
    methods = MethodRegistry(log)
    inbox = Inbox(MemoryJournal(config.daemon.journal_keep), config.daemon.subscriber_buffer)
    ctx = DaemonContext(paths=paths, config=config, identity=identity, log=log, methods=methods, inbox=inbox)
    log.info("starting", pid=os.getpid(), pk=short_pk(identity.pk), home=str(paths.state_dir))
    activated = activated_control_socket()  # taken first: no child may inherit the LISTEN_* variables
    watchdog = watchdog_period()

    async with trio.open_nursery() as root:
        await root.start(watch_signals, ctx.shutdown, root.cancel_scope, log)
        if watchdog is not None:
            await root.start(partial(run_watchdog, watchdog))
        await start_services(ctx, root)

        pumps = Gauge()
        settings: dict[str, Any] = {"max_clients": config.daemon.max_control_clients, "pumps": pumps}
        control = (
            ControlServer(paths.socket_path, methods, inbox, log, **settings)
            if activated is None
            else ActivatedControlServer(activated, paths.socket_path, methods, inbox, log, **settings)
        )
        register_subscription_methods(methods, inbox, pumps)
        register_daemon_methods(ctx, control)
        ctx.on_shutdown("control", control.drain)
        await root.start(control.run)

        ctx.ready.set()
        _report_ready(ready_fd)
        notify_ready(status=_status_line(ctx))
        log.info("ready", pid=os.getpid(), socket=str(paths.socket_path), pk=short_pk(identity.pk))

        await ctx.shutdown.requested.wait()
        notify_stopping(status=f"stopping ({ctx.shutdown.reason})")
        log.info("stopping", reason=ctx.shutdown.reason, grace_s=config.daemon.shutdown_grace_s)
        with trio.move_on_after(config.daemon.shutdown_grace_s) as grace:
            await ctx.run_shutdown_hooks()
        if grace.cancelled_caught:
            log.warn("shutdown_grace_expired", grace_s=config.daemon.shutdown_grace_s)
        root.cancel_scope.cancel()
    log.info("stopped", reason=ctx.shutdown.reason)


# Every long-lived service, in dependency order: `async def run(ctx, *, task_status)`. Each one registers
# its control methods (replacing the reserved stubs), status provider and shutdown hook on `ctx`, then
# calls `task_status.started()`. The order to keep:
#   1. client sessions: relay connections, ratchet sessions, the durable journal (`ctx.inbox.use_journal`)
#   2. rooms: the hosted relay and its tunnel, then the handlers (they consume the inbox)
# The control socket comes after all of them (in `run_daemon`): when it answers, everything is ready.
SERVICES: tuple[Service, ...] = (run_sessions, run_rooms)


async def start_services(ctx: DaemonContext, root: trio.Nursery) -> None:
    for service in SERVICES:
        await root.start(service, ctx)
        ctx.log.debug("service_started", service=getattr(service, "__qualname__", repr(service)))


async def watch_signals(
    shutdown: Shutdown,
    root_scope: trio.CancelScope,
    log: Logger,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """First SIGTERM/SIGINT/SIGHUP asks for a graceful stop; a second one cancels everything at once.

    SIGHUP is a stop, not a reload: it is what a daemon run in a terminal gets when the terminal (or the
    ssh session) goes away, and its default action would end us without stopping the tunnels we started.
    """
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        task_status.started()
        async for signum in signals:
            name = signal.Signals(signum).name
            if not shutdown.requested.is_set():
                log.info("signal", signal=name, action="graceful stop")
                shutdown.request(name)
            else:
                log.warn("signal", signal=name, action="immediate stop")
                root_scope.cancel()


class ActivatedControlServer(ControlServer):
    """The control server on the listening socket systemd passed us (socket activation).

    It never binds, and never unlinks the socket file: systemd owns both and keeps its own copy.
    """

    def __init__(self, sock: socket.socket, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._activated = sock

    async def run(self, *, task_status: trio.TaskStatus[ControlServer] = trio.TASK_STATUS_IGNORED) -> None:
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(self._activated))
        bound = self._activated.getsockname()
        if bound != str(self.path):
            self.log.warn("control_socket_elsewhere", activated=bound, expected=str(self.path))
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(trio.serve_listeners, self._handle, [listener])
                self.log.info("control_listening", socket=bound, activated=True)
                task_status.started(self)
        finally:
            listener.socket.close()


def _status_line(ctx: DaemonContext) -> str:
    rooms = ctx.service_status().get("rooms", {}).get("rooms", 0)
    return f"ready: {rooms} room(s); control socket {ctx.paths.socket_path}"


def _report_ready(ready_fd: int | None) -> None:
    """Tell an autostarting agentroomctl that the socket answers (s6-style notification fd)."""
    if ready_fd is None:
        return
    try:
        os.write(ready_fd, b"ready\n")
    except OSError:
        pass  # the CLI that started us is gone: nobody to tell
    finally:
        os.close(ready_fd)


def _report_failure(log: Logger, exc: BaseException) -> int:
    """An error raised inside the nursery arrives wrapped in an ExceptionGroup: report the cause plainly."""
    leaf = exc
    while isinstance(leaf, BaseExceptionGroup) and len(leaf.exceptions) == 1:
        leaf = leaf.exceptions[0]
    if isinstance(leaf, StoreFlushError):  # at run time: the disk failed under us; stop before anything else leaves
        log.error("disk_failed", error=str(leaf))
    elif isinstance(leaf, ControlSocketError | ConfigError | IdentityStoreError | StoreError | SystemdError | OSError):
        log.error("startup_failed", error=str(leaf))
    else:
        log.error("crashed", error=repr(leaf), traceback="".join(traceback.format_exception(exc)))
    return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
