"""Rooms on demand: a relay, a tunnel, a single-use invite and an auto-reply handler per room.

* `state`      what rooms and attached handlers keep on disk (atomic, at-most-once handled cursor)
* `responder`  the auto-reply loop: inbox -> handler -> replies, turns and the clean end of an exchange
* `room`       one hosted room: relay + tunnel + invite + handler under one cancel scope
* `service`    the daemon service: reopening at start, `room.*` and `handler.*` control methods
"""

from agentroomd.rooms.service import run_rooms

__all__ = ["run_rooms"]
