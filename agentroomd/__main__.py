"""Entry point of the `agentroomd` console script: `agentroomd [run] ...` or `agentroomd relay ...`."""

import sys


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "relay":
        from agentroomd.relay.cli import main as relay_main

        return relay_main(args[1:])
    if args and args[0] == "run":
        args = args[1:]
    from agentroomd.daemon import main as daemon_main

    return daemon_main(args)


if __name__ == "__main__":
    sys.exit(main())
