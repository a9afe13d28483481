"""Entry point of the `agentroomd` console script."""

import sys


def main() -> int:
    print("agentroomd: not yet implemented", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
