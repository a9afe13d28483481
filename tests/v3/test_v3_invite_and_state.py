"""v3 invite URLs, the inviter's registry, and the saved-state formats: bad input gets a clear error."""

import json
import struct

import attrs
import pytest
from v3_support import ALICE, ALICE_PK, BOB, RELAY_URL, START_MS, Line, SeededRandom

from ratchet.invite import (
    InviteExpiredError,
    InviteMalformedError,
    InviteSchemeError,
    InviteSignatureError,
)
from ratchet.session import SessionStateError
from ratchet.session import session_from_json as v2_session_from_json
from ratchet.v3 import (
    INVITE_PREFIX_V3,
    InviteRegistry,
    invite_url,
    invite_version,
    issue_invite,
    parse_invite_url,
    publish_fields,
    respond,
    start_handshake,
)
from ratchet.v3.errors import HandshakeRejected, StateFormatError
from ratchet.v3.invite import LABEL_INVITE_SIGNATURE, PUBLISH_BLOB, RedeemedInvite
from ratchet.v3.state import (
    pending_from_json,
    pending_to_json,
    registry_from_json,
    registry_to_json,
    session_from_json,
    session_to_json,
)
from ratchet.v3.wire import b64u, b64u_strict


def _issue(seed: str = "invites", ttl_ms: int = 3_600_000):  # type: ignore[no-untyped-def]
    rng = SeededRandom(seed)
    return rng, issue_invite(ALICE, RELAY_URL, START_MS, rng, ttl_ms=ttl_ms)


def _signed(body: bytes) -> str:
    return INVITE_PREFIX_V3 + b64u(body + ALICE.sign(LABEL_INVITE_SIGNATURE + body))


# ── invite URLs ─────────────────────────────────────────────────────────────────────────────────


def test_the_url_prefix_chooses_the_protocol_version() -> None:
    _, issued = _issue()
    assert invite_version(invite_url(ALICE, issued)) == 3
    assert invite_version("agentroom://invite/eyJibG9iIjp7fX0") == 2
    for text in ("https://example.com", "agentroom://invite4/x", "", "AGENTROOM://INVITE3/x"):
        with pytest.raises(InviteSchemeError):
            invite_version(text)


def test_an_invite_url_round_trips_and_never_shows_its_secret() -> None:
    _, issued = _issue()
    url = invite_url(ALICE, issued)
    invite = parse_invite_url(url, START_MS)
    assert (invite.invite_id, invite.expires_at, invite.inviter_pk, invite.server_url, invite.secret) == (
        issued.invite_id,
        issued.expires_at,
        ALICE_PK,
        RELAY_URL,
        issued.secret,
    )
    assert invite.inviter_x25519_pk == ALICE.x25519_pk
    for text in (repr(invite), repr(issued)):
        assert b64u(issued.secret) not in text and url[20:] not in text
    assert invite_url(ALICE, issued) == url  # deterministic: the URL can be shown again from the registry


def test_the_relay_learns_only_a_random_id_and_the_expiry() -> None:
    rng, issued = _issue()
    other = issue_invite(ALICE, RELAY_URL, START_MS, rng)
    publish = publish_fields(issued)
    expected = {"invite_id": issued.invite_id, "blob": PUBLISH_BLOB, "expires_at": issued.expires_at}
    assert attrs.asdict(publish) == expected
    assert issued.invite_id != other.invite_id and issued.secret != other.secret
    assert b64u(issued.secret)[:8] not in issued.invite_id.replace("-", "")


@pytest.mark.parametrize(
    ("mutate", "error", "message"),
    [
        (lambda url: INVITE_PREFIX_V3 + b64u(b64u_strict(url[20:], "x")[:-3]), InviteMalformedError, "wrong length"),
        (lambda url: url[:40], InviteMalformedError, "too short"),
        (lambda url: url + "AAAA", InviteMalformedError, "wrong length"),
        (lambda url: url + "=", InviteMalformedError, "base64url"),
        (lambda url: url.replace("-", "+"), InviteMalformedError, "base64url"),
        (lambda url: url[:25] + "!" + url[26:], InviteMalformedError, "base64url"),
        (lambda url: INVITE_PREFIX_V3 + "BA" + url[22:], InviteMalformedError, "unsupported invite version"),
        (lambda url: "agentroom://invite/" + url[20:], InviteSchemeError, "not an agentroom invite URL"),
        (lambda url: url[:30] + ("A" if url[30] != "A" else "B") + url[31:], InviteSignatureError, "invalid signature"),
    ],
    ids=["cut", "truncated", "extended", "padded", "other-alphabet", "stray-char", "version", "v2-prefix", "altered"],
)
def test_a_malformed_invite_url_says_what_is_wrong(mutate, error, message) -> None:  # type: ignore[no-untyped-def]
    _, issued = _issue()
    with pytest.raises(error) as caught:
        parse_invite_url(mutate(invite_url(ALICE, issued)), START_MS)
    assert message in str(caught.value)


def test_an_invite_with_a_bad_server_url_or_expiry_is_malformed_even_when_signed() -> None:
    def body(expires_at: int, url: bytes) -> bytes:
        fixed = struct.pack(">BH16sQ32s32sH", 3, 0, bytes(16), expires_at, ALICE.ed25519_pk, ALICE.x25519_pk, len(url))
        return fixed + url + bytes(32)

    with pytest.raises(InviteMalformedError, match="not UTF-8"):
        parse_invite_url(_signed(body(START_MS + 1, b"\xff\xfe")), START_MS)
    with pytest.raises(InviteMalformedError, match="expires_at"):
        parse_invite_url(_signed(body(0, b"wss://x")), START_MS)
    with pytest.raises(InviteExpiredError):
        parse_invite_url(_signed(body(START_MS - 60_000, b"wss://x")), START_MS)


def test_issuing_refuses_nonsense_parameters() -> None:
    rng = SeededRandom("bad-params")
    with pytest.raises(ValueError, match="ttl_ms"):
        issue_invite(ALICE, RELAY_URL, START_MS, rng, ttl_ms=0)
    with pytest.raises(ValueError, match="server_url"):
        issue_invite(ALICE, "", START_MS, rng)
    with pytest.raises(ValueError, match="server_url"):
        issue_invite(ALICE, "wss://" + "x" * 3000, START_MS, rng)


# ── the registry ────────────────────────────────────────────────────────────────────────────────


def test_the_registry_refuses_duplicates_revokes_and_prunes() -> None:
    rng, issued = _issue(ttl_ms=60_000)
    registry = InviteRegistry().with_issued(issued)
    with pytest.raises(ValueError, match="already"):
        registry.with_issued(issued)
    started = start_handshake(BOB, parse_invite_url(invite_url(ALICE, issued), START_MS), START_MS, rng)
    init = started.claim.as_session_init(ALICE_PK)
    with pytest.raises(HandshakeRejected) as caught:
        respond(registry.revoke(issued.invite_id), ALICE, init, START_MS, rng)
    assert caught.value.reason == "unknown_invite"
    redeemed = respond(registry, ALICE, init, START_MS, rng).registry
    assert isinstance(redeemed.find(issued.invite_id), RedeemedInvite)
    assert redeemed.prune(issued.expires_at + 30_000).find(issued.invite_id) is not None  # still in grace
    assert redeemed.prune(issued.expires_at + 30_001) == InviteRegistry()
    assert registry.prune(issued.expires_at + 30_001) == InviteRegistry()


# ── saved states ────────────────────────────────────────────────────────────────────────────────


def test_every_state_round_trips_through_its_json() -> None:
    line = Line("state-roundtrip")
    line.send("alice", b"a")
    line.send("alice", b"b")
    line.deliver("bob", 1)
    line.send("bob", b"c")
    for name in ("alice", "bob"):
        assert session_from_json(session_to_json(line.sessions[name])) == line.sessions[name]
    rng, issued = _issue()
    started = start_handshake(BOB, parse_invite_url(invite_url(ALICE, issued), START_MS), START_MS, rng)
    assert pending_from_json(pending_to_json(started.pending)) == started.pending
    registry = respond(
        InviteRegistry().with_issued(issued), ALICE, started.claim.as_session_init(ALICE_PK), START_MS, rng
    ).registry.with_issued(issue_invite(ALICE, RELAY_URL, START_MS, rng))
    assert registry_from_json(registry_to_json(registry)) == registry


def _session_document() -> dict[str, object]:
    line = Line("state-errors")
    line.send("alice", b"a")
    line.send("alice", b"b")
    line.deliver("bob", 1)
    line.send("bob", b"so that Bob has both chains")
    document: dict[str, object] = json.loads(line.state("bob"))
    return document


def _broken(change) -> bytes:  # type: ignore[no-untyped-def]
    document = _session_document()
    change(document)
    return json.dumps(document).encode()


def _set(path: str, value: object):  # type: ignore[no-untyped-def]
    def change(document: dict[str, object]) -> None:
        *parents, last = path.split(".")
        target: object = document
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]  # type: ignore[index]
        if isinstance(target, list):
            target[int(last)] = value
        else:
            assert isinstance(target, dict)
            target[last] = value

    return change


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_set("format", "agentroom-session"), "not an agentroom-session-v3 document"),
        (_set("version", 2), "unsupported version 2"),
        (_set("extra", 1), "extra"),
        (lambda d: d.pop("root_key"), "root_key"),
        (_set("features", "0"), "expected int"),
        (_set("closed_by_us", 0), "expected bool"),
        (_set("root_key", "AAAA"), "root_key: expected 32 bytes"),
        (_set("root_key", "A" * 42 + "B"), "not canonical"),
        (_set("session_id", b64u(bytes(32))), "session_id: expected 16 bytes"),
        (_set("role", "observer"), "role"),
        (lambda d: d.update(own_pk=d["peer_pk"]), "same key"),
        (_set("sending.ratchet_sk", b64u(bytes(32))), "does not belong"),
        (lambda d: d.update(sending=None, receiving=None), "neither"),
        (_set("receiving.n", 2**32 + 1), "out of range"),
        (_set("skipped.0.n", -1), "out of range"),
        (lambda d: d["skipped"].append(dict(d["skipped"][0])), "stored twice"),  # type: ignore[attr-defined]
        (_set("skipped", {}), "expected list"),
        (_set("retired_ratchet_pks", ["AAAA"]), "retired[0]: expected 32 bytes"),
        (_set("last_used_at", -5), "not a time"),
    ],
)
def test_a_corrupt_session_state_says_what_is_wrong(change, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(StateFormatError) as caught:
        session_from_json(_broken(change))
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not valid JSON"),
        (b"\xff", "not valid JSON"),
        (b"[]", "expected a JSON object"),
        (b'{"format": "agentroom-session-v3", "format": "x"}', "duplicate key"),
        (b'{"format": "agentroom-session-v3", "version": NaN}', "not valid JSON"),
    ],
)
def test_state_that_is_not_a_json_object_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(StateFormatError, match=message):
        session_from_json(data)


def test_v2_and_v3_state_files_are_never_confused() -> None:
    line = Line("state-cross")
    with pytest.raises(SessionStateError, match="agentroom-session-v3"):
        v2_session_from_json(line.state("bob"))
    v2_like = json.dumps({"format": "agentroom-session", "version": 1}).encode()
    with pytest.raises(StateFormatError, match="format 'agentroom-session'"):
        session_from_json(v2_like)


def test_corrupt_pending_and_registry_states_say_what_is_wrong() -> None:
    rng, issued = _issue()
    started = start_handshake(BOB, parse_invite_url(invite_url(ALICE, issued), START_MS), START_MS, rng)
    pending = json.loads(pending_to_json(started.pending))
    for key, value, message in (
        ("invite_id", "not-a-uuid", "invite_id"),
        ("chaining_key", b64u(bytes(32)), "expected 64 bytes"),
        ("own_pk", ALICE_PK, "does not belong"),
    ):
        broken = dict(pending, **{key: value})
        with pytest.raises(StateFormatError, match=message):
            pending_from_json(json.dumps(broken).encode())
    registry = json.loads(registry_to_json(InviteRegistry().with_issued(issued)))
    registry["issued"].append(dict(registry["issued"][0]))
    with pytest.raises(StateFormatError, match="twice"):
        registry_from_json(json.dumps(registry).encode())
    registry["issued"] = [dict(registry["issued"][0], secret="AAAA")]
    with pytest.raises(StateFormatError, match="secret"):
        registry_from_json(json.dumps(registry).encode())
