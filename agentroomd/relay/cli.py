"""`agentroomd relay [--host 127.0.0.1] [--port 8787] [--db PATH] [--tunnel]`: the relay on its own.

Settings come from the `[relay]` table of agentroom.toml (found as the daemon finds it: `--home`,
`$AGENTROOM_HOME`, or the XDG layout), then the reference's environment variables, then these flags.
Once listening it prints one JSON line on stdout, `{"event": "ready", "url": ..., "http_url": ...,
"port": ...}`, so a script can start it on port 0 and read where it is; logs are NDJSON on stderr.
With `--tunnel` the relay is also published through the `[tunnel]` provider (a cloudflared quick tunnel
by default, supervised and restarted as a room's is): every change prints `{"event": "tunnel", "state":
..., "url": "wss://.../ws" or null, "last_error": ...}`; hand out the `url` (it changes when a quick
tunnel restarts). A tunnel that cannot start at all (no cloudflared) stops the relay with exit 1.
SIGTERM or SIGINT stops it gracefully (sockets closed with 1001, store flushed, tunnel ended); exit 0.

Exit codes: 0 stopped cleanly, 1 runtime failure (port in use, database unusable), 2 usage or
configuration error.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from functools import partial

import trio

from agentroomd.log import Logger
from agentroomd.relay.config import RelayConfig, RelayConfigError, relay_config_from
from agentroomd.relay.server import RelayHandle, serve_relay
from agentroomd.relay.store import StoreError
from agentroomd.tunnel import TunnelConfig, TunnelError, TunnelState, TunnelSupervisor

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agentroomd relay", description="Run the agentroom relay on its own (protocols v2 and v3)."
    )
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default 8787; 0 picks a free port)")
    parser.add_argument("--db", help="SQLite database path, or :memory: (default: <state dir>/relay.db)")
    parser.add_argument("--home", help="agentroom home directory (default $AGENTROOM_HOME or the XDG layout)")
    parser.add_argument("--config", help="agentroom.toml to read the [relay] table from")
    parser.add_argument("--tunnel", action="store_true",
                        help="also publish it through the [tunnel] provider (default: a cloudflared quick tunnel)")
    return parser


def load_relay_config(args: argparse.Namespace) -> RelayConfig:
    """The relay's settings for these arguments: agentroom.toml's [relay], the environment, then the flags."""
    return _load(args)[0]


def _load(args: argparse.Namespace) -> tuple[RelayConfig, TunnelConfig]:
    from agentroomd.config import ConfigError, load_config, resolve_paths

    try:
        paths = resolve_paths(home=args.home, config_file=args.config)
        config = load_config(paths.config_file)
        tunnel = TunnelConfig.from_table(config.tunnel)
    except (ConfigError, TunnelError) as exc:
        raise RelayConfigError(str(exc)) from exc
    relay = relay_config_from(
        config.relay, state_dir=paths.state_dir, host=args.host, port=args.port, db=args.db, tunnel=args.tunnel or None
    )
    return relay, tunnel


async def _run(config: RelayConfig, tunnel_config: TunnelConfig, log: Logger) -> None:
    async with trio.open_nursery() as nursery:
        handle: RelayHandle = await nursery.start(partial(serve_relay, config, log=log))
        ready = {"event": "ready", "url": handle.url, "http_url": handle.http_url, "port": handle.port}
        print(json.dumps(ready), flush=True)
        if config.tunnel:
            supervisor = TunnelSupervisor(tunnel_config, handle.port, environ=os.environ, logger=Logger("tunnel"),
                                          label="relay")
            await nursery.start(supervisor.run)
            nursery.start_soon(_report_tunnel, supervisor, nursery.cancel_scope)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("shutdown.signal", signal=signal.Signals(signum).name)
                break
        nursery.cancel_scope.cancel()


async def _report_tunnel(supervisor: TunnelSupervisor, relay_scope: trio.CancelScope) -> None:
    """One JSON line per tunnel change; a tunnel that can never work ends the relay (TunnelError, exit 1)."""
    version = -1
    while True:
        version, status = await supervisor.status.wait_change(version)
        event = {"event": "tunnel", "state": status.state.value, "url": status.url, "last_error": status.last_error}
        print(json.dumps(event), flush=True)
        if status.state is TunnelState.FATAL:
            raise TunnelError(status.last_error or "the tunnel cannot start")


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        config, tunnel_config = _load(args)
    except RelayConfigError as exc:
        print(f"agentroomd relay: {exc}", file=sys.stderr)
        return EXIT_USAGE
    log = Logger("relay", level=config.log_level)
    failures: list[BaseException] = []
    try:
        trio.run(_run, config, tunnel_config, log)
    except* (OSError, StoreError, RelayConfigError, TunnelError) as group:
        failures += _leaves(group)
    except* KeyboardInterrupt:
        pass  # a second Ctrl-C while stopping
    for failure in failures:
        log.error("server.failed", error=f"{failure.__class__.__name__}: {failure}")
        print(f"agentroomd relay: {failure}", file=sys.stderr)
    return EXIT_FAILURE if failures else EXIT_OK


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found += _leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc]
    return found
