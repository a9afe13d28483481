"""The relay's counters, served at /metrics as JSON (the reference's shape) or Prometheus text.

The reference's five keys (`ws_connections`, `challenges_issued`, `hello_failures`,
`messages_routed_total`, `rate_limit_hits`) keep their names and meaning; the rest are ours. Every
rejected input is counted in `errors_total` by the ERROR code sent (or the close reason), so a
client sending garbage is visible without reading logs.
"""

from __future__ import annotations

from collections import Counter

import attrs

PREFIX = "agentroom_relay_"

# name -> help text. Counters only grow; gauges are filled in by the app when rendering.
COUNTERS: dict[str, str] = {
    "challenges_issued": "Challenges handed out by GET /auth/challenge.",
    "hello_failures": "HELLO frames with a bad signature.",
    "hello_success_total": "Successful HELLO authentications.",
    "token_resumes_total": "Connections authenticated by a session token.",
    "token_failures_total": "Connections that presented an invalid or expired session token.",
    "messages_routed_total": "MSG/SESSION_INIT/SESSION_ACK frames accepted (delivered or queued).",
    "messages_delivered_total": "Routed frames written straight to the recipient's connection.",
    "messages_queued_total": "Routed frames stored for later delivery.",
    "deliveries_total": "DELIVERY frames sent (live and from the store, including redeliveries).",
    "deliveries_acked_total": "DELIVERY_ACK frames that released a stored row.",
    "queue_full_total": "Frames refused because the recipient's queue was full.",
    "invites_published_total": "INVITE_PUBLISH frames stored.",
    "invites_claimed_total": "Invites claimed (each at most once).",
    "rate_limit_hits": "Requests or frames refused by a rate limit.",
    "frames_received_total": "WebSocket messages received.",
    "oversize_frames_total": "WebSocket messages over the size limit (closed with 1009).",
    "auth_timeouts_total": "Connections closed for not authenticating in time.",
    "connections_total": "WebSocket connections accepted.",
    "connections_refused_total": "WebSocket upgrades refused (connection cap or shutdown).",
    "pending_dropped_malformed": "Stored rows dropped because they no longer parse.",
    "store_errors_total": "Database operations that failed.",
    "connections_crashed_total": "Connections dropped because the HTTP/WebSocket layer failed on their input.",
}
GAUGES: dict[str, str] = {
    "ws_connections": "Authenticated agents connected now.",
    "connections_open": "WebSocket connections open now, authenticated or not.",
    "uptime_s": "Seconds since the relay started.",
}


@attrs.define
class Metrics:
    counters: Counter[str] = attrs.Factory(lambda: Counter(dict.fromkeys(COUNTERS, 0)))
    errors_by_code: Counter[str] = attrs.Factory(Counter)

    def inc(self, name: str, n: int = 1) -> None:
        if name not in COUNTERS:
            raise KeyError(f"unknown metric {name}")
        self.counters[name] += n

    def error(self, code: str) -> None:
        """Count one ERROR frame (or protocol close) sent for ``code``."""
        self.errors_by_code[code] += 1

    def as_json(self, gauges: dict[str, int]) -> dict[str, object]:
        body: dict[str, object] = {name: gauges.get(name, 0) for name in GAUGES}
        body.update({name: self.counters[name] for name in COUNTERS})
        body["errors_total"] = dict(sorted(self.errors_by_code.items()))
        return body

    def as_prometheus(self, gauges: dict[str, int]) -> str:
        lines: list[str] = []
        for name, help_text in GAUGES.items():
            lines += [
                f"# HELP {PREFIX}{name} {help_text}",
                f"# TYPE {PREFIX}{name} gauge",
                f"{PREFIX}{name} {gauges.get(name, 0)}",
            ]
        for name, help_text in COUNTERS.items():
            metric = name if name.endswith("_total") else f"{name}_total"
            lines += [f"# HELP {PREFIX}{metric} {help_text}", f"# TYPE {PREFIX}{metric} counter"]
            lines.append(f"{PREFIX}{metric} {self.counters[name]}")
        lines += [
            f"# HELP {PREFIX}errors_total ERROR frames and protocol closes sent, by code.",
            f"# TYPE {PREFIX}errors_total counter",
        ]
        for code, count in sorted(self.errors_by_code.items()):
            lines.append(f'{PREFIX}errors_total{{code="{_label(code)}"}} {count}')
        return "\n".join(lines) + "\n"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
