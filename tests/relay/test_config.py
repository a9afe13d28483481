"""Relay settings: [relay] table < environment < flags; clear errors; the HMAC secret generated once, kept 0600."""

import os
import stat
from pathlib import Path

import pytest

from agentroomd.relay.config import (
    SECRET_FILE_NAME,
    RelayConfig,
    RelayConfigError,
    ensure_hmac_secret,
    relay_config_from,
)


def test_defaults_are_the_reference_limits() -> None:
    config = relay_config_from({}, {}, state_dir="/srv/agentroom")
    assert (config.host, config.port, config.db) == ("127.0.0.1", 8787, "/srv/agentroom/relay.db")
    assert (config.max_pending_msgs, config.pending_ttl_days, config.max_invites_per_pk) == (500, 7, 20)
    assert (config.ws_max_payload, config.max_connections, config.frame_burst, config.frames_per_min) == (
        262_144,
        500,
        120,
        60,
    )
    assert (config.challenge_per_min, config.hello_failures_per_min, config.token_ttl_s) == (10, 5, 3600)


def test_environment_overrides_the_table_and_flags_override_both() -> None:
    table = {"port": 9000, "max_pending_msgs": 10, "trust_proxy": False, "db": "/a.db"}
    env = {
        "PORT": "9100",
        "AGENTROOM_DB": "/b.db",
        "MAX_PENDING_MSGS": "20",
        "PENDING_TTL_DAYS": "1.5",
        "TRUST_PROXY": "true",
        "RATE_LIMIT_DISABLED": "1",
        "LOG_LEVEL": "warn",
        "WS_MAX_PAYLOAD": "1024",
        "MAX_CONNECTIONS": "7",
        "MAX_INVITES_PER_PK": "3",
        "HMAC_SECRET": "s" * 40,
        "HMAC_SECRET_PREVIOUS": "p" * 40,
    }
    config = relay_config_from(table, env, port=9200)
    assert config.port == 9200
    assert (config.db, config.max_pending_msgs, config.pending_ttl_days) == ("/b.db", 20, 1.5)
    assert (config.trust_proxy, config.rate_limit_disabled, config.log_level) == (True, True, "warn")
    assert (config.ws_max_payload, config.max_connections, config.max_invites_per_pk) == (1024, 7, 3)
    assert (config.hmac_secret, config.hmac_secret_previous) == ("s" * 40, "p" * 40)


@pytest.mark.parametrize(
    ("table", "env", "message"),
    [
        ({"prot": 1}, {}, "[relay] prot: unknown setting"),
        ({"port": "eighty"}, {}, "port ([relay] table): expected an integer, got 'eighty'"),
        ({}, {"PORT": "x"}, "port (environment PORT): expected an integer"),
        ({}, {"TRUST_PROXY": "maybe"}, "trust_proxy (environment TRUST_PROXY): expected true or false"),
        ({"port": 70000}, {}, "port: must be 0..65535"),
        ({"max_pending_msgs": 0}, {}, "max_pending_msgs: must be greater than 0"),
        ({"shutdown_grace_s": float("nan")}, {}, "shutdown_grace_s: must be greater than 0"),
        ({"ping_interval_s": float("nan")}, {}, "ping_interval_s: must be greater than 0"),
        ({"log_level": "loud"}, {}, "log_level: must be one of"),
        ({"hmac_secret": 5}, {}, "hmac_secret ([relay] table): expected a string, got <hidden>"),
    ],
)
def test_bad_settings_are_named(table: dict[str, object], env: dict[str, str], message: str) -> None:
    with pytest.raises(RelayConfigError) as raised:
        relay_config_from(table, env)
    assert message in str(raised.value)


def test_secrets_never_show_in_repr() -> None:
    config = RelayConfig(hmac_secret="topsecret" * 5, hmac_secret_previous="older" * 8)
    assert "topsecret" not in repr(config) and "older" not in repr(config)


def test_a_missing_secret_is_generated_once_and_kept_private(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    config = relay_config_from({}, {}, state_dir=state)
    first = ensure_hmac_secret(config)
    second = ensure_hmac_secret(config)
    assert first.hmac_secret is not None and len(first.hmac_secret) >= 32
    assert first.hmac_secret == second.hmac_secret  # kept, so tokens survive a restart
    secret_file = state / SECRET_FILE_NAME
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert secret_file.read_text().strip() == first.hmac_secret
    out, err = capsys.readouterr()
    assert first.hmac_secret not in out + err


def test_a_short_secret_is_replaced_and_a_short_previous_ignored(tmp_path: Path) -> None:
    config = relay_config_from({"hmac_secret": "short", "hmac_secret_previous": "old"}, {}, state_dir=tmp_path)
    resolved = ensure_hmac_secret(config)
    assert resolved.hmac_secret != "short" and resolved.hmac_secret_previous is None
    long_secret = "L" * 32
    assert ensure_hmac_secret(relay_config_from({"hmac_secret": long_secret}, {})).hmac_secret == long_secret


def test_an_in_memory_relay_writes_no_secret_file(tmp_path: Path) -> None:
    config = relay_config_from({"db": ":memory:"}, {}, state_dir=tmp_path)
    assert ensure_hmac_secret(config).hmac_secret is not None
    assert os.listdir(tmp_path) == []


def test_the_secret_beside_a_database_does_not_touch_the_directory_mode(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    ensure_hmac_secret(relay_config_from({"db": str(shared / "relay.db")}, {}))
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755
    assert stat.S_IMODE((shared / SECRET_FILE_NAME).stat().st_mode) == 0o600
