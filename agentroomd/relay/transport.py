"""hypercorn's per-socket driver with a write that does not yield when the kernel takes the bytes at once.

hypercorn 0.18's `TCPServer.protocol_send` writes every frame under a `trio.Lock`, inside a shielded
`SocketStream.send_all`. On the happy path (the socket's buffer has room, as it has for nearly every
frame a relay writes) that costs two trips through trio's scheduler per frame, one for the lock and
one after the `send` system call, and the relay writes two frames per message it routes (ACK and
DELIVERY). Measured (bench/throughput.py, 10 pairs, A/B in one run): the relay's CPU per routed
message went from 193 to 132 us with this class; a bare forwarder that also acks its sender (the
relay's frame pattern, none of its logic) from 106-118 to 67-71 us (two runs).

`FastWriteTCPServer` keeps hypercorn's code for everything (HTTP, the WebSocket protocol, closing)
and changes only how the bytes of a write reach the socket:

* if nobody holds hypercorn's send lock (no write in progress, none waiting), the bytes are written
  with one non-blocking `send` right away, synchronously, and the call returns without yielding;
* whatever the kernel did not take (a full socket buffer) is written exactly as hypercorn writes it:
  under its lock, in a shielded `send_all`, so the caller waits until the peer reads (backpressure,
  and the order of writes, are unchanged: a write that finds the lock held goes behind it);
* a socket error is what `send_all`'s BrokenResourceError is to hypercorn: the connection is closed,
  but reported from a task of its own rather than inside the failed write (`_report_broken_stream`);
* **[ours]** a write that cannot finish within `WRITE_STALL_S` (the peer stopped reading) closes the
  socket and ends the connection the same way. hypercorn's write is shielded, so without a limit a
  client that keeps its socket open but reads nothing holds its connection for ever: every close
  (auth timeout, "replaced by new connection", shutdown) queues behind the stuck write.

A write that returns has its bytes in the kernel, as before. The descriptor is looked up on every
write (never cached), so a closed socket reads as -1 and fails instead of reaching a reused number.
"""

from __future__ import annotations

import os

import trio
from hypercorn.events import Closed, Event, RawData
from hypercorn.trio.tcp_server import TCPServer

WRITE_STALL_S = 60.0
"""Longest a frame may take to reach the kernel once the socket buffer is full (a reading peer needs ms)."""


class FastWriteTCPServer(TCPServer):
    """`TCPServer` whose writes skip trio's scheduler when the socket takes them whole (see the module doc)."""

    _broken_reported = False

    async def protocol_send(self, event: Event) -> None:
        lock = self.send_lock
        if type(event) is not RawData:
            await super().protocol_send(event)
            return
        data = event.data
        if lock.locked():
            sent = 0
            await lock.acquire()  # behind the write in progress, as hypercorn's `async with self.send_lock`
        else:
            try:
                sent = os.write(self.stream.socket.fileno(), data)
            except BlockingIOError:
                sent = 0
            except OSError:
                sent = -1  # EPIPE, ECONNRESET, or EBADF once closed
            if sent == len(data):
                return
            # Nothing yielded since the lock was seen free, so it is taken without waiting, and without a
            # cancellation point: a frame that is partly written must be finished, or the stream is garbage.
            lock.acquire_nowait()
        try:
            if sent >= 0:
                # The socket buffer is full: the rest goes out the way hypercorn writes everything, shielded
                # (half a frame would leave the stream garbage) but not for ever.
                with trio.CancelScope(shield=True, deadline=trio.current_time() + WRITE_STALL_S) as stall:
                    await self.stream.send_all(memoryview(data)[sent:])
                if not stall.cancelled_caught:
                    return
                self.stream.socket.close()  # the peer reads nothing: part of a frame is out, so the stream must go
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            lock.release()
        self._report_broken_stream()

    def _report_broken_stream(self) -> None:
        """hypercorn's answer to a broken stream, `protocol.handle(Closed())`, in a task of its own, once.

        hypercorn awaits it right in the failed write, which is the app's own `send`; it ends by putting
        "websocket.disconnect" into the app's queue of received messages. If that queue is full (a client
        that sent frames without reading the answers), only the app can empty it, and the app is waiting
        for its write: the connection would never end.
        """
        if not self._broken_reported:
            self._broken_reported = True
            self._task_group.spawn(self.protocol.handle, Closed())
