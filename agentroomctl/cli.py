"""`agentroomctl [--home DIR] [--json] [--no-autostart] COMMAND ...`: drive agentroomd from a shell or a script.

Every command is one call (or one subscription) over the control socket; the daemon does the work.
`--home`, `--json` and `--no-autostart` are accepted before or after the command word. With `--json`,
stdout carries exactly one JSON document (NDJSON lines for `listen`), errors included
(`{"error": {...}}`); human messages go to stderr. Exit codes: see `agentroomctl.exitcodes`.
"""

import argparse
import datetime
import json
import os
import re
import select
import signal
import sys
import time
from collections.abc import Callable
from typing import Any, NoReturn

from agentroomctl import exitcodes
from agentroomctl.autostart import connect
from agentroomctl.client import ControlClient, DaemonUnreachableError
from agentroomd.config import ConfigError, Paths, resolve_paths
from agentroomd.control import api
from ratchet.jsjson import encodes_as_utf8

STOP_WAIT_S = 30.0  # longer than the daemon's default shutdown grace
MAX_SAFE_INTEGER = 2**53 - 1  # expiries are JSON numbers every peer reads exactly (ms since the epoch)


class UsageError(Exception):
    """Bad arguments found after parsing (argparse itself exits 2 for the rest)."""


class CommandError(Exception):
    """A failure with a known exit code and a message that says what to do."""

    def __init__(self, message: str, exit_code: int, error_type: str = "agentroomctl.Error") -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.error_type = error_type


class Parser(argparse.ArgumentParser):
    # Set by `_parse` from the raw arguments: argparse fails before `--json` is known, yet the error must be JSON.
    json_errors = False

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        if Parser.json_errors:
            _emit_usage_error(message)
        self.exit(exitcodes.USAGE, f"agentroomctl: {message} (see `agentroomctl --help`)\n")


def _common(parser: argparse.ArgumentParser, top: bool) -> None:
    """The global options; on subcommands they default to SUPPRESS so a value given before the command survives."""
    default: Any = None if top else argparse.SUPPRESS
    parser.add_argument("--home", default=default, help="the daemon's home directory (default: $AGENTROOM_HOME)")
    flag_default: Any = False if top else argparse.SUPPRESS
    parser.add_argument("--json", action="store_true", default=flag_default, help="machine-readable output")
    parser.add_argument(
        "--no-autostart", action="store_true", default=flag_default, help="fail (exit 3) instead of starting a daemon"
    )


def build_parser() -> Parser:
    parser = Parser(
        prog="agentroomctl",
        description="Drive agentroomd, the agentroom daemon, over its control socket. "
        "A command starts the daemon in the background when none runs for the home.",
        epilog=exitcodes.SUMMARY,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(parser, top=True)
    parser.add_argument("--version", action="version", version=f"agentroomctl {api.package_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    def command(name: str, help_text: str, into: Any = commands) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = into.add_parser(name, help=help_text, description=help_text)
        _common(sub, top=False)
        return sub

    command("status", "show the daemon's status")
    command("whoami", "print this identity's public key")
    invite = commands.add_parser("invite", help="create or accept an invite").add_subparsers(
        dest="invite_command", metavar="create|accept", required=True, parser_class=Parser
    )
    create = command("create", "create a single-use invite URL for a peer", invite)
    create.add_argument("--relay", help="relay URL to embed (ws://HOST:PORT/ws or wss://...)")
    create.add_argument("--ttl", type=_duration_ms,
                        help="lifetime, e.g. 24h, 90m, 3600s, 1d (default [client] invite_ttl_s, 24h)")
    create.add_argument("--compat", choices=["v2"], help="v2: invite a TypeScript agentroom peer (default: v3)")
    accept = command("accept", "accept an invite URL from a peer", invite)
    accept.add_argument("url", help="agentroom://invite/...")
    accept.add_argument("--alias", help="a local name for the new peer")
    _handler_options(accept, "answer the inviter's messages with CMD (kept across daemon restarts)")
    accept.add_argument("--seed", help="send TEXT to the inviter right after accepting (counts as turn 1)")
    command("peers", "list peers with a session, and its state (established, pending or closed)")
    close = command("close", "end the session with a peer for good, telling it the conversation ended here")
    close.add_argument("peer", help="full public key, unique prefix, or alias")
    send = command("send", "send one message to a peer", commands)
    send.add_argument("peer", help="full public key, unique prefix, or alias")
    send.add_argument("text", help="the message, or - to read it from stdin (one trailing newline is dropped)")
    listen = command("listen", "print received messages as they arrive")
    listen.description = (
        "Print received messages as they arrive. A peer's session closing while listening (its CLOSE "
        "arrived, or `agentroomctl close`) is printed too, in order with the messages, but is not a message: "
        "it does not count toward --count, and listen goes on (other peers may still write). It is not "
        "replayed with --since: `agentroomctl peers` shows the state closed."
    )
    listen.add_argument("--count", type=_positive_int,
                        help="exit after N messages (a session closing is shown but not counted)")
    listen.add_argument("--timeout", type=_positive_float, help="stop after S seconds (exit 5 if --count not reached)")
    listen.add_argument("--since", type=_cursor, help="first replay kept messages after CURSOR (0: all kept)")
    command("stop", "stop the daemon (and wait until it has exited)")
    room = commands.add_parser("room", help="host a room: relay + tunnel + handler").add_subparsers(
        dest="room_command", metavar="open|list|status|stop", required=True, parser_class=Parser
    )
    room_open = command("open", "open a room: a relay of its own, a tunnel, a single-use invite, a handler", room)
    _handler_options(room_open, "answer the guest's messages with CMD")
    room_open.add_argument("--tunnel", action=argparse.BooleanOptionalAction, default=True,
                           help="a public URL through the [tunnel] provider (default), or a local relay only")
    room_open.add_argument("--name", help="a unique name for the room, usable instead of its id")
    room_open.add_argument("--port", type=_port, help="the room relay's port (default: any free one, kept)")
    room_open.add_argument("--seed", help="send TEXT to the guest once it has joined (counts as turn 1)")
    room_open.add_argument("--ttl", type=_duration_ms,
                           help="the invite's lifetime, e.g. 24h (default [client] invite_ttl_s, 24h)")
    room_open.add_argument("--compat", choices=["v2"], help="v2: the guest runs the TypeScript agentroom")
    command("list", "list rooms", room)
    room_status = command("status", "show one room", room)
    room_status.add_argument("room_id", nargs="?", help="the room (default: the only one)")
    room_stop = command("stop", "stop a room", room)
    room_stop.add_argument("room_id", nargs="?", help="the room (default: the only one)")
    room_stop.add_argument("--all", action="store_true", help="stop every room")
    serve = command("serve", "answer every peer without a handler of its own with CMD, until interrupted")
    serve.add_argument("--on-message", required=True, metavar="CMD",
                       help="run for every message: the text on stdin, the reply on stdout")
    serve.add_argument("--max-turns", type=_count, default=0, metavar="N",
                       help="stop once an exchange reaches N replies of ours (the seed included); 0: never")
    serve.add_argument("--seed", help="first send TEXT to --to PEER (counts as turn 1)")
    serve.add_argument("--to", metavar="PEER", help="the peer the seed goes to")
    return parser


def _handler_options(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--on-message", metavar="CMD", help=what + " (via /bin/sh -c; text on stdin, reply on stdout)")
    parser.add_argument("--max-turns", type=_count, default=0, metavar="N",
                        help="end the exchange after N replies of ours, the seed included, telling the peer; 0: never")


def _duration_ms(text: str) -> int:
    units = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)([smhd]?)", text.strip())
    if not parts or "".join(number + unit for number, unit in parts) != text.strip():
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: use e.g. 24h, 90m, 3600s, 1d")
    total_ms = sum(float(number) * units[unit] for number, unit in parts) * 1000
    if int(min(total_ms, MAX_SAFE_INTEGER)) <= 0:
        raise argparse.ArgumentTypeError("the duration must be positive")
    if total_ms > MAX_SAFE_INTEGER - time.time() * 1000:
        raise argparse.ArgumentTypeError(f"duration {text!r} is too long: an expiry must stay below 2^53 ms after 1970")
    return int(total_ms)


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected 0 or a positive integer, got {text!r}")
    return int(text)


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 1..65535, got {text!r}")
    return int(text)


def _cursor(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a cursor (an integer >= 0), got {text!r}")
    return int(text)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


# ------------------------------------------------------------------------------------------------- main


# A public key is 43 base64url characters, and about 1 in 32 starts with "-": argparse would take it for
# an option. Such a token cannot be one of our options, so it is shielded from argparse and restored.
_DASHED_KEY = re.compile(r"-[A-Za-z0-9_-]{42}")
_SHIELD = "\x00"


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    raw = sys.argv[1:] if argv is None else argv
    options = raw[: raw.index("--")] if "--" in raw else raw
    Parser.json_errors = "--json" in options
    args = parser.parse_args([_SHIELD + a if _DASHED_KEY.fullmatch(a) else a for a in raw])
    for name, value in vars(args).items():
        if isinstance(value, str) and value.startswith(_SHIELD):
            setattr(args, name, value[len(_SHIELD):])
        if isinstance(value, str) and name != "home" and not encodes_as_utf8(value):
            # Python keeps undecodable argv bytes as lone surrogates; JSON-RPC carries UTF-8 text only.
            parser.error(f"argument {name.replace('_', '-')}: not UTF-8 text (messages, names and commands are text)")
    return args


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = _parse(parser, argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        if args.json:
            _emit_usage_error("no command given")
        return exitcodes.USAGE
    as_json: bool = args.json
    try:
        paths = resolve_paths(args.home)
        return run_command(args, paths)
    except CommandError as exc:
        return _fail(as_json, str(exc), exc.exit_code, exc.error_type)
    except UsageError as exc:
        return _fail(as_json, str(exc), exitcodes.USAGE, "agentroomctl.Usage")
    except ConfigError as exc:
        return _fail(as_json, str(exc), exitcodes.USAGE, "agentroomctl.Config")
    except DaemonUnreachableError as exc:
        return _fail(as_json, str(exc), exitcodes.UNREACHABLE, "agentroomctl.DaemonUnreachable")
    except api.RpcError as exc:
        hint = exitcodes.HINTS.get(exc.type)
        return _fail(as_json, exc.message, exitcodes.for_error_type(exc.type), exc.type, hint, exc.data)
    except KeyboardInterrupt:
        if args.command in ("listen", "serve"):
            return exitcodes.OK  # their normal end
        message = "interrupted before agentroomd answered; what was asked may still be carried out"
        return _fail(as_json, message, exitcodes.INTERRUPTED, "agentroomctl.Interrupted")
    except BrokenPipeError:
        # stdout was closed by the reader (e.g. `| head -1`): stop quietly, as Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return exitcodes.OK


def _fail(
    as_json: bool,
    message: str,
    code: int,
    error_type: str,
    hint: str | None = None,
    data: dict[str, Any] | None = None,
) -> int:
    print(f"agentroomctl: {message}", file=sys.stderr)
    if hint:
        print(f"  hint: {hint}", file=sys.stderr)
    if as_json:
        error: dict[str, Any] = {"type": error_type, "message": message, "exit_code": code}
        if data:
            error.update({key: value for key, value in data.items() if key not in error})
        _emit({"error": error})
    return code


def _emit_usage_error(message: str) -> None:
    _emit({"error": {"type": "agentroomctl.Usage", "message": message, "exit_code": exitcodes.USAGE}})


def _emit(document: Any) -> None:
    sys.stdout.write(json.dumps(document, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def run_command(args: argparse.Namespace, paths: Paths) -> int:
    if args.command == "stop":
        return cmd_stop(args, paths)
    client, _hello = connect(paths, autostart=not args.no_autostart)
    with client:
        handler = COMMANDS[_command_key(args)]
        return handler(args, client)


def _command_key(args: argparse.Namespace) -> str:
    if args.command == "invite":
        return f"invite {args.invite_command}"
    if args.command == "room":
        return f"room {args.room_command}"
    return str(args.command)


def _result_json(value: Any) -> Any:
    return api.params_converter.unstructure(value)


# --------------------------------------------------------------------------------------------- commands


def cmd_status(args: argparse.Namespace, client: ControlClient) -> int:
    status = client.call(api.DAEMON_STATUS)
    if args.json:
        _emit(_result_json(status))
        return exitcodes.OK
    print(f"agentroomd {status.version} running (pid {status.pid}, up {_age(status.uptime_s)})")
    print(f"  pk       {status.pk}")
    print(f"  home     {status.home or status.state_dir}")
    print(f"  socket   {status.socket}")
    print(f"  control  {status.control.clients} client(s), {status.control.subscriptions} subscription(s)")
    print(f"  journal  last cursor {status.journal.last_cursor}")
    for name, document in sorted(status.services.items()):
        fields = "  ".join(f"{key}={_plain(value)}" for key, value in document.items())
        print(f"  {name:<8} {fields}")
    return exitcodes.OK


def _plain(value: object) -> str:
    """A status value for people: `key value` pairs and words instead of Python's reprs of the JSON."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "-"
    if isinstance(value, dict):
        return ", ".join(f"{key} {_plain(item)}" for key, item in value.items()) or "-"
    if isinstance(value, list):
        return "; ".join(_plain(item) for item in value) or "none"
    return str(value)


def cmd_whoami(args: argparse.Namespace, client: ControlClient) -> int:
    identity = client.call(api.IDENTITY_SHOW)
    if args.json:
        _emit(_result_json(identity))
    else:
        print(identity.pk)
    return exitcodes.OK


def cmd_invite_create(args: argparse.Namespace, client: ControlClient) -> int:
    params = api.InviteCreateParams(relay=args.relay, ttl_ms=args.ttl, compat=args.compat)
    invite = client.call(api.INVITE_CREATE, params)
    if args.json:
        _emit(_result_json(invite))
    else:
        print(invite.url)
        print(f"Single use; expires {_when(invite.expires_at)}. Give it to your peer: agentroomctl invite accept URL",
              file=sys.stderr)
    return exitcodes.OK


def cmd_invite_accept(args: argparse.Namespace, client: ControlClient) -> int:
    if args.max_turns and not args.on_message:
        raise UsageError("--max-turns needs --on-message")
    if args.seed is not None and not args.seed:
        raise UsageError("--seed: the message is empty")
    # Messages from the inviter can only arrive after the accept: handle everything past this cursor.
    since = client.call(api.DAEMON_STATUS).journal.last_cursor if args.on_message else None
    accepted = client.call(api.INVITE_ACCEPT, api.InviteAcceptParams(url=args.url, alias=args.alias))
    document: dict[str, Any] = _result_json(accepted)
    if args.on_message:
        attached = client.call(api.HANDLER_ATTACH, api.HandlerAttachParams(
            peer=accepted.peer, on_message=args.on_message, max_turns=args.max_turns, seed=args.seed, since=since))
        document["handler"] = _result_json(attached.handler)
        document["seed"] = _result_json(attached.seed)
    elif args.seed is not None:
        document["seed"] = _result_json(
            client.call(api.MESSAGE_SEND, api.MessageSendParams(peer=accepted.peer, text=args.seed))
        )
    if args.json:
        _emit(document)
    else:
        if accepted.answered:
            print(f"Session established with {accepted.peer} (relay {accepted.relay})")
        else:
            print(f"Invite accepted; waiting for {accepted.peer} to answer (relay {accepted.relay}): its daemon seems "
                  "offline, and messages can be sent once it answers")
        if args.on_message:
            limit = f", at most {args.max_turns} turns" if args.max_turns else ""
            print(f"Answering its messages with: {args.on_message}{limit}", file=sys.stderr)
        if document.get("seed") and document["seed"]["status"] == "after_handshake":
            print(f"Seed: sent once {accepted.peer} answers the invite (its daemon is offline)", file=sys.stderr)
        elif document.get("seed"):
            print(f"Seed sent: {document['seed']['status']}", file=sys.stderr)
    return exitcodes.OK


def cmd_peers(args: argparse.Namespace, client: ControlClient) -> int:
    listing = client.call(api.PEER_LIST)
    if args.json:
        _emit(_result_json(listing))
    elif not listing.peers:
        print("No peers yet: create an invite with `agentroomctl invite create`, or accept one.", file=sys.stderr)
    else:
        for peer in listing.peers:
            print(f"{peer.pk}  {peer.alias or '-'}  {peer.relay}  {peer.state}")
    return exitcodes.OK


def cmd_close(args: argparse.Namespace, client: ControlClient) -> int:
    closed = client.call(api.PEER_CLOSE, api.PeerCloseParams(peer=args.peer))
    if args.json:
        _emit(_result_json(closed))
    else:
        print(f"Closed the session with {closed.peer} (relay: {closed.status})")
        if closed.status == "pending":
            print("The relay has not answered yet: the close goes out by itself once it is reachable.",
                  file=sys.stderr)
    return exitcodes.OK


def cmd_send(args: argparse.Namespace, client: ControlClient) -> int:
    text = _read_stdin_text() if args.text == "-" else args.text
    if not text:
        raise UsageError("the message is empty")
    sent = client.call(api.MESSAGE_SEND, api.MessageSendParams(peer=args.peer, text=text))
    if args.json:
        _emit(_result_json(sent))
    else:
        print(f"{sent.status} ({sent.msg_id})")
    return exitcodes.OK


def _read_stdin_text() -> str:
    data = sys.stdin.buffer.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"stdin is not UTF-8 text (byte {exc.start}); messages are text") from exc
    return text[:-1] if text.endswith("\n") else text


def cmd_listen(args: argparse.Namespace, client: ControlClient) -> int:
    signal.signal(signal.SIGTERM, _raise_interrupt)  # SIGTERM ends `listen` like Ctrl-C: exit 0
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    received = 0
    subscription = _subscribe(client, args.since, warn_gap=True)
    if not args.json:
        print("Listening for messages (Ctrl-C to stop).", file=sys.stderr)
    while args.count is None or received < args.count:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            break
        note = client.next_notification(remaining)
        if note is None:
            break
        raw_params = note.get("params")
        params: dict[str, Any] = raw_params if isinstance(raw_params, dict) else {}
        if params.get("subscription") != subscription:
            continue
        if note.get("method") == api.MESSAGE_RECEIVED:
            message = api.results_converter.structure(params.get("message"), api.ReceivedMessage)
            _print_message(message, args.json)
            received += 1
        elif note.get("method") == api.SESSION_CLOSED:
            # not a message: never counted, and listen goes on (other peers may still write)
            _print_session_closed(api.results_converter.structure(params, api.SessionClosedNotification), args.json)
        elif note.get("method") == api.MESSAGE_CLOSED:
            error = api.RpcError.from_json(params.get("error"))
            if error.type != api.LAGGED.type:
                raise error
            # Too slow for the live stream: continue from the journal where we stopped, losing nothing.
            subscription = _subscribe(client, int(error.data.get("resume_from", 0)), warn_gap=False)
    if args.count is not None and received < args.count:
        raise CommandError(
            f"received {received} of {args.count} messages before the {args.timeout:g} s timeout",
            exitcodes.TIMEOUT,
            "agentroomctl.Timeout",
        )
    return exitcodes.OK


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _subscribe(client: ControlClient, since: int | None, warn_gap: bool) -> str:
    result = client.call(api.MESSAGE_SUBSCRIBE, api.SubscribeParams(since=since))
    if warn_gap and since is not None and since + 1 < result.oldest <= result.cursor:
        print(
            f"agentroomctl: messages with cursor {since + 1}..{result.oldest - 1} are no longer kept",
            file=sys.stderr,
        )
    return result.subscription


def _print_message(message: api.ReceivedMessage, as_json: bool) -> None:
    if as_json:
        _emit(
            {"from": message.from_, "text": message.text, "msg_id": message.msg_id, "ts": message.ts,
             "cursor": message.cursor}
        )
    else:
        sys.stdout.write(f"[{_when(message.ts)}] {message.from_[:12]}…  {message.text}\n")
        sys.stdout.flush()


def _print_session_closed(closed: api.SessionClosedNotification, as_json: bool) -> None:
    if as_json:
        _emit({"event": "session_closed", "peer": closed.peer, "by": closed.by, "ts": closed.ts})
    else:
        what = "closed the session" if closed.by == "peer" else "session closed by us"
        sys.stdout.write(f"[{_when(closed.ts)}] {closed.peer[:12]}…  {what}\n")
        sys.stdout.flush()


def cmd_stop(args: argparse.Namespace, paths: Paths) -> int:
    """Never autostarts; waits until the daemon process has exited, so a new start cannot find it still running."""
    try:
        client = ControlClient.connect(paths.socket_path)
    except (FileNotFoundError, ConnectionRefusedError):
        if args.json:
            _emit({"stopped": False, "running": False})
        else:
            print(f"agentroomd is not running for {paths.home or paths.state_dir}", file=sys.stderr)
        return exitcodes.OK
    except OSError as exc:
        raise DaemonUnreachableError(f"cannot connect to agentroomd at {paths.socket_path}: {exc}") from exc
    with client:
        result = client.call(api.DAEMON_STOP)
    if not _wait_for_exit(result.pid, STOP_WAIT_S):
        raise CommandError(
            f"agentroomd (pid {result.pid}) is still running {STOP_WAIT_S:g} s after the stop request; "
            f"see {paths.log_file}, or `kill {result.pid}`",
            exitcodes.TIMEOUT,
            "agentroomctl.Timeout",
        )
    if args.json:
        _emit({"stopped": True, "running": False, "pid": result.pid})
    else:
        print(f"agentroomd (pid {result.pid}) stopped", file=sys.stderr)
    return exitcodes.OK


def _wait_for_exit(pid: int, timeout: float) -> bool:
    """Wait for another process (not our child) to exit: a pidfd becomes readable when it does."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    except OSError:
        return _poll_exit(pid, timeout)
    try:
        readable, _, _ = select.select([pidfd], [], [], timeout)
        return bool(readable)
    finally:
        os.close(pidfd)


def _poll_exit(pid: int, timeout: float) -> bool:
    """Fallback where pidfds are unavailable: a short bounded poll of kill(pid, 0)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        time.sleep(0.05)
    return False


def cmd_room_open(args: argparse.Namespace, client: ControlClient) -> int:
    if args.seed is not None and not args.seed:
        raise UsageError("--seed: the message is empty")
    if args.max_turns and not args.on_message:
        raise UsageError("--max-turns needs --on-message")
    params = api.RoomOpenParams(
        on_message=args.on_message, tunnel=args.tunnel, name=args.name, port=args.port, seed=args.seed,
        max_turns=args.max_turns, ttl_ms=args.ttl, compat=args.compat,
    )
    room = client.call(api.ROOM_OPEN, params)
    if args.json:
        _emit(_result_json(room))
        return exitcodes.OK
    _print_room(room)
    if room.invite_url:
        print(f"\nYour guest joins with:\n  agentroomctl invite accept '{room.invite_url}'", file=sys.stderr)
    return exitcodes.OK


def cmd_room_list(args: argparse.Namespace, client: ControlClient) -> int:
    listing = client.call(api.ROOM_LIST)
    if args.json:
        _emit(_result_json(listing))
    elif not listing.rooms:
        print("No rooms open: open one with `agentroomctl room open`.", file=sys.stderr)
    else:
        for room in listing.rooms:
            where = room.public_url or room.relay_url or "-"
            print(f"{room.room_id}  {room.name or '-'}  {room.state}  port {room.port}  {where}")
    return exitcodes.OK


def cmd_room_status(args: argparse.Namespace, client: ControlClient) -> int:
    room = client.call(api.ROOM_STATUS, api.RoomRef(room_id=args.room_id))
    if args.json:
        _emit(_result_json(room))
    else:
        _print_room(room)
    return exitcodes.OK


def cmd_room_stop(args: argparse.Namespace, client: ControlClient) -> int:
    if args.all and args.room_id:
        raise UsageError("give a ROOM or --all, not both")
    stopped = client.call(api.ROOM_STOP, api.RoomStopParams(room_id=args.room_id, all=args.all))
    if args.json:
        _emit(_result_json(stopped))
    else:
        print(f"stopped: {', '.join(stopped.stopped) or 'nothing (no room was open)'}", file=sys.stderr)
    return exitcodes.OK


def _print_room(room: api.RoomInfo) -> None:
    print(f"{room.room_id}{f' ({room.name})' if room.name else ''}  {room.state}")
    if room.relay_url:
        print(f"  relay     {room.relay_url}")
    if room.tunnel is not None:
        restarts = f", {room.tunnel.restarts} restart(s)" if room.tunnel.restarts else ""
        print(f"  public    {room.public_url or '-'}  (tunnel {room.tunnel.state}{restarts})")
    if room.invite_url and not room.peer:
        expires = f"  (single use, expires {_when(room.invite_expires_at)})" if room.invite_expires_at else ""
        print(f"  invite    {room.invite_url}{expires}")
    if room.peer:
        print(f"  guest     {room.peer}")
        print(f"  messages  {room.messages.received} received, {room.messages.sent} sent")
    if room.handler is not None:
        h = room.handler
        turns = f"{h.turns}/{h.max_turns}" if h.max_turns else str(h.turns)
        print(f"  handler   {h.command}")
        print(f"            {h.runs} runs, {h.replies} replies, {h.failures} failures, {h.timeouts} timeouts, "
              f"{h.truncated} truncated, {h.skipped} skipped; turns {turns}{f'; ended: {h.ended}' if h.ended else ''}")
    if room.last_error:
        print(f"  problem   {room.last_error}")


def cmd_serve(args: argparse.Namespace, client: ControlClient) -> int:
    """Stream the serve's events until it is done (max-turns), the daemon stops, or we are interrupted."""
    signal.signal(signal.SIGTERM, _raise_interrupt)  # SIGTERM ends `serve` like Ctrl-C: exit 0
    if args.seed is not None and not args.to:
        raise UsageError("--seed needs --to PEER")
    if args.to is not None and args.seed is None:
        # --to only says where the seed goes: alone it would serve every peer, not the one it names
        raise UsageError("--to PEER needs --seed TEXT (it names the peer the seed goes to; serve answers every peer)")
    if args.seed is not None and not args.seed:
        raise UsageError("--seed: the message is empty")
    started = client.call(
        api.HANDLER_SERVE,
        api.ServeParams(on_message=args.on_message, seed=args.seed, to=args.to, max_turns=args.max_turns),
    )
    serving: dict[str, Any] = {"type": "serving", "pk": started.pk, "ts": int(time.time() * 1000)}
    if started.seed is not None:
        serving["seed"] = _result_json(started.seed)
    _serve_event(serving, args.json)
    while True:
        note = client.next_notification(None)
        if note is None:
            continue
        raw_params = note.get("params")
        params: dict[str, Any] = raw_params if isinstance(raw_params, dict) else {}
        if note.get("method") != api.HANDLER_EVENT or params.get("serve") != started.serve:
            continue
        event = params.get("event")
        if not isinstance(event, dict):
            continue
        if event.get("type") == "closed":
            raise api.RpcError.from_json(event.get("error"))
        _serve_event(event, args.json)
        if event.get("type") == "done":
            return exitcodes.OK


def _serve_event(event: dict[str, Any], as_json: bool) -> None:
    if as_json:
        _emit(event)
        return
    kind = event.get("type")
    peer = str(event.get("from") or event.get("to") or event.get("peer") or "")[:12]
    lines = {
        "serving": f"serving as {event.get('pk')} (Ctrl-C to stop)" + (
            f"; the seed goes to {str(event['seed'].get('peer'))[:12]}… once it answers the invite"
            if isinstance(event.get("seed"), dict) and event["seed"].get("status") == "after_handshake" else ""),
        "received": f"{peer}… -> {event.get('text')}",
        "replied": f"{peer}… <- {event.get('text')}  (turn {event.get('turn')}{', seed' if event.get('seed') else ''})",
        "no_reply": f"{peer}… handler printed nothing: no reply",
        "handler_error": f"{peer}… handler failed: {event.get('error')}",
        "send_error": f"{peer}… reply not sent: {event.get('error')}",
        "skipped": f"{peer}… message not handled: {event.get('reason')}",
        "done": f"{peer}… exchange ended ({event.get('reason')}) after {event.get('replies')} replies",
    }
    when = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    print(f"[{when}] {lines.get(str(kind), json.dumps(event, ensure_ascii=False))}", file=sys.stderr)


def _age(seconds: float) -> str:
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else (f"{minutes}m{secs:02d}s" if minutes else f"{secs}s")


def _when(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000).astimezone().isoformat(timespec="seconds")


COMMANDS: dict[str, Callable[[argparse.Namespace, ControlClient], int]] = {
    "status": cmd_status,
    "whoami": cmd_whoami,
    "invite create": cmd_invite_create,
    "invite accept": cmd_invite_accept,
    "peers": cmd_peers,
    "close": cmd_close,
    "send": cmd_send,
    "listen": cmd_listen,
    "room open": cmd_room_open,
    "room list": cmd_room_list,
    "room status": cmd_room_status,
    "room stop": cmd_room_stop,
    "serve": cmd_serve,
}
