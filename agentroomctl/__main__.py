"""Entry point of the `agentroomctl` console script."""

import sys


def main() -> int:
    print("agentroomctl: not yet implemented", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
