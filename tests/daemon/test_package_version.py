"""`agentroomctl` and the daemon report the installed version without paying for `importlib.metadata` at start."""

import importlib.metadata
import subprocess
import sys

from agentroomd.control import api


def test_the_reported_version_is_the_installed_one() -> None:
    assert api.package_version() == importlib.metadata.version("agentroom")


def test_looking_up_the_version_does_not_import_importlib_metadata() -> None:
    probe = (
        "import sys\n"
        "from agentroomd.control import api\n"
        "print(api.package_version(), 'importlib.metadata' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=30)
    assert out.stdout.split() == [importlib.metadata.version("agentroom"), "False"]
