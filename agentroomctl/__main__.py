"""Entry point of the `agentroomctl` console script."""

import sys

from agentroomctl.cli import main

if __name__ == "__main__":
    sys.exit(main())
