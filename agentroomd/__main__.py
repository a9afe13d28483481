"""Entry point of the `agentroomd` console script.

    agentroomd [run] ...           the daemon (agentroomd.daemon)
    agentroomd relay ...           a standalone relay (agentroomd.relay.cli)
    agentroomd install-service     write the systemd user unit, print the systemctl --user commands
"""

import argparse
import sys
from pathlib import Path

USAGE = """usage: agentroomd [run] [options]      the daemon (agentroomd run --help for its options)
       agentroomd relay [options]      a relay on its own (agentroomd relay --help)
       agentroomd install-service      write the systemd user unit (agentroomd install-service --help)"""


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    if args and args[0] == "relay":
        from agentroomd.relay.cli import main as relay_main

        return relay_main(args[1:])
    if args and args[0] == "install-service":
        return install_service_main(args[1:])
    if args and args[0] == "run":
        args = args[1:]
    from agentroomd.daemon import main as daemon_main

    return daemon_main(args)


def install_service_main(argv: list[str]) -> int:
    """Write agentroomd.service (and with --socket agentroomd.socket) for the current user."""
    from agentroomd.config import ConfigError, refuse_shared_home, resolve_paths
    from agentroomd.systemd import default_exec_start, install_service

    parser = argparse.ArgumentParser(
        prog="agentroomd install-service",
        description="Write the systemd user unit that runs this agentroomd (this Python, this PATH) and print "
        "the systemctl --user commands that enable it. Nothing is started.",
    )
    parser.add_argument("--home", help="run the daemon for this home (default: $AGENTROOM_HOME, else the XDG layout)")
    parser.add_argument(
        "--socket", action="store_true", help="also write agentroomd.socket (socket activation of the control socket)"
    )
    parser.add_argument("--unit-dir", type=Path, help="write the units here instead of ~/.config/systemd/user")
    args = parser.parse_args(argv)
    exec_start = default_exec_start()
    try:
        paths = resolve_paths(args.home)
        refuse_shared_home(paths)  # the daemon would refuse to start there: no unit that can only fail
    except ConfigError as exc:
        print(f"agentroomd install-service: {exc}", file=sys.stderr)
        return 2
    if paths.home is not None:
        exec_start += ["--home", str(paths.home)]
    try:
        commands = install_service(
            unit_dir=args.unit_dir, exec_start=exec_start, with_socket=args.socket, socket_path=paths.socket_path
        )
    except OSError as exc:
        print(f"agentroomd install-service: cannot write the unit: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(commands)
    return 0


if __name__ == "__main__":
    sys.exit(main())
