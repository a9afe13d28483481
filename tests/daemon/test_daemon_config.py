"""Paths, agentroom.toml, the home lock and the identity file, in-process."""

import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from agentroomd.config import (
    SUN_PATH_MAX,
    ClientSettings,
    Config,
    ConfigError,
    DaemonSettings,
    ensure_own_tmp_dir,
    load_config,
    resolve_paths,
    write_config,
)
from agentroomd.handlers import HandlerLimits
from agentroomd.identity_store import IdentityStoreError, load_or_create_identity
from agentroomd.lockfile import AlreadyRunningError, HomeLock
from agentroomd.relay.config import RelayConfig
from agentroomd.tunnel import TunnelConfig

EXAMPLE = Path(__file__).resolve().parents[2] / "agentroom.toml.example"


@pytest.fixture
def tmp() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ar-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- paths


def test_a_home_holds_config_state_and_socket(tmp: Path) -> None:
    paths = resolve_paths(tmp / "h", env={"XDG_RUNTIME_DIR": "/run/user/1"})
    assert paths.home == tmp / "h"
    assert paths.config_file == tmp / "h" / "agentroom.toml"
    assert paths.identity_file == tmp / "h" / "identity.json"
    assert paths.socket_path == tmp / "h" / "agentroomd.sock"
    assert paths.lock_file == tmp / "h" / "agentroomd.lock"
    assert resolve_paths(env={"AGENTROOM_HOME": str(tmp / "h")}) == paths  # the variable means the same


def test_without_a_home_the_xdg_layout_is_used() -> None:
    env = {"HOME": "/home/u", "XDG_RUNTIME_DIR": "/run/user/1000"}
    paths = resolve_paths(env=env)
    assert paths.home is None
    assert paths.config_file == Path("/home/u/.config/agentroom/agentroom.toml")
    assert paths.state_dir == Path("/home/u/.local/share/agentroom")
    assert paths.socket_path == Path("/run/user/1000/agentroom/agentroomd.sock")
    custom = resolve_paths(env={"HOME": "/home/u", "XDG_CONFIG_HOME": "/c", "XDG_DATA_HOME": "/d"})
    assert custom.config_file == Path("/c/agentroom/agentroom.toml")
    assert custom.socket_path == Path("/d/agentroom/agentroomd.sock")  # no runtime dir: in the state dir
    assert resolve_paths(env={**env, "AGENTROOM_SOCKET": "/s/x.sock"}).socket_path == Path("/s/x.sock")
    assert resolve_paths(config_file="/etc/a.toml", env=env).config_file == Path("/etc/a.toml")


def test_a_home_too_long_for_sun_path_gets_a_stable_short_socket(tmp: Path) -> None:
    long_a, long_b = tmp / ("a" * 110), tmp / ("b" * 110)
    first, second = resolve_paths(long_a, env={}), resolve_paths(long_b, env={})
    assert first.socket_path.parent == Path(f"/tmp/agentroom-{os.getuid()}")
    assert len(os.fsencode(first.socket_path)) <= SUN_PATH_MAX
    assert first.socket_path == resolve_paths(str(long_a) + "/", env={}).socket_path  # same home, same socket
    assert first.socket_path != second.socket_path
    assert first.state_dir == long_a  # only the socket moves


def test_a_shared_tmp_socket_dir_must_be_ours_and_private(tmp: Path) -> None:
    private = tmp / "sock"
    ensure_own_tmp_dir(private)
    assert stat.S_IMODE(private.stat().st_mode) == 0o700
    private.chmod(0o777)
    ensure_own_tmp_dir(private)  # ours but loose: tightened
    assert stat.S_IMODE(private.stat().st_mode) == 0o700
    planted = tmp / "planted"
    planted.symlink_to(private)
    with pytest.raises(ConfigError, match="not a directory"):
        ensure_own_tmp_dir(planted)


# --------------------------------------------------------------------------------------------- config


def test_a_missing_file_means_every_default(tmp: Path) -> None:
    assert load_config(tmp / "absent.toml", env={}) == Config()


def test_the_example_documents_every_key_with_its_default() -> None:
    text = EXAMPLE.read_text()
    config = load_config(EXAMPLE, env={})
    assert config.daemon == DaemonSettings() and config.client == ClientSettings()
    sections = {"daemon": DaemonSettings, "client": ClientSettings, "relay": RelayConfig,
                "handlers": HandlerLimits, "tunnel": TunnelConfig}  # fmt: skip
    for section, cls in sections.items():
        body = text.split(f"\n[{section}]\n", 1)[1].split("\n[", 1)[0]
        documented = set(re.findall(r"^#? ?([a-z_0-9]+) = ", body, flags=re.MULTILINE))
        assert documented == {field.name for field in attrs.fields(cls)}, section
        for key, value in getattr(config, section).items() if section in ("relay", "handlers", "tunnel") else ():
            default = next(f.default for f in attrs.fields(cls) if f.name == key)
            assert value == default, f"[{section}] {key}: example says {value!r}, default is {default!r}"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[daemon]\nlog_level = 3\n", r"\[daemon\] log_level: expected a string, got int 3"),
        ("[daemon]\nlog_level = 'loud'\n", r"\[daemon\] log_level: must be one of debug, info, warn, error"),
        ("[daemon]\njournal_keep = true\n", r"\[daemon\] journal_keep: expected an integer, got true"),
        ("[daemon]\nshutdown_grace_s = 0\n", r"\[daemon\] shutdown_grace_s: must be greater than 0"),
        ("[client]\nrelays = 'ws://x/ws'\n", r"\[client\] relays"),
        ("[client]\nrelays = ['http://x']\n", r"is not a ws:// or wss:// URL"),
        ("[client]\nrelay = []\n", r"\[client\] unknown key relay"),
        ("[rooms]\n", r"unknown section \[rooms\]"),
        ("client = 5\n", r"client must be a table"),
        ("[daemon]\nlog_level = \n", r"invalid TOML: .*line 2"),
    ],
)
def test_bad_config_names_the_file_and_the_key(tmp: Path, text: str, message: str) -> None:
    path = tmp / "agentroom.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as caught:
        load_config(path, env={})
    assert str(caught.value).startswith(str(path))


def test_environment_overrides_single_keys_and_names_itself_in_errors(tmp: Path) -> None:
    path = tmp / "agentroom.toml"
    path.write_text("[daemon]\njournal_keep = 5\n[relay]\nport = 1\n")
    env = {"AGENTROOM_DAEMON_JOURNAL_KEEP": "7", "AGENTROOM_CLIENT_RELAYS": '["ws://a/ws"]',
           "AGENTROOM_RELAY_HOST": "0.0.0.0", "AGENTROOM_DAEMON_LOG_LEVEL": "debug"}  # fmt: skip
    config = load_config(path, env=env)
    assert config.daemon.journal_keep == 7 and config.daemon.log_level == "debug"
    assert config.client.relays == ["ws://a/ws"]
    assert config.relay == {"port": 1, "host": "0.0.0.0"}
    with pytest.raises(ConfigError, match=r"^environment variable AGENTROOM_DAEMON_JOURNAL_KEEP: .*integer"):
        load_config(path, env={"AGENTROOM_DAEMON_JOURNAL_KEEP": "lots"})
    with pytest.raises(ConfigError, match=r"AGENTROOM_CLIENT_RELAY_URL: \[client\] has no key 'relay_url'"):
        load_config(path, env={"AGENTROOM_CLIENT_RELAY_URL": "ws://a/ws"})


def test_config_written_back_reads_the_same(tmp: Path) -> None:
    path = tmp / "agentroom.toml"
    config = attrs.evolve(
        Config(), client=ClientSettings(relays=["ws://127.0.0.1:8787/ws"]), relay={"port": 9000}
    )
    write_config(path, config)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_config(path, env={}) == config


# --------------------------------------------------------------------------------- lock and identity


def test_the_home_lock_is_exclusive_and_released(tmp: Path) -> None:
    lock_file = tmp / "agentroomd.lock"
    with HomeLock(lock_file):
        with pytest.raises(AlreadyRunningError, match=f"pid {os.getpid()} holds") as caught:
            HomeLock(lock_file).acquire()
        assert caught.value.pid == os.getpid()
    with HomeLock(lock_file):  # released: can be taken again
        pass
    assert lock_file.read_text() == ""


def test_identity_is_created_once_then_loaded(tmp: Path) -> None:
    path = tmp / "identity.json"
    created, was_new = load_or_create_identity(path)
    assert was_new and stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded, was_new_again = load_or_create_identity(path)
    assert not was_new_again and loaded.pk == created.pk
    path.chmod(0o644)
    load_or_create_identity(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # a readable secret key is tightened


@pytest.mark.parametrize("content", [b"", b"{", b"[]", b'{"ed25519_pk": 1}', b"\xff\xfe"])
def test_a_corrupt_identity_names_the_file_and_is_never_replaced(tmp: Path, content: bytes) -> None:
    path = tmp / "identity.json"
    path.write_bytes(content)
    with pytest.raises(IdentityStoreError, match=f"corrupt identity file {re.escape(str(path))}"):
        load_or_create_identity(path)
    assert path.read_bytes() == content
