"""What the tests share to run real things: processes, agentroomctl, waits, fakes for the internet.

Importable from every test directory as ``support`` (pyproject: ``pythonpath = ["tests"]``). One job
per module, so a test imports exactly the machinery it drives:

* `support.env`: the binaries, a scrubbed environment, short directories under /tmp;
* `support.waiting`: bounded waits for another process (pidfd, or polling where nothing can be awaited), a port probe;
* `support.processes`: `agentroomd relay` and `agentroomd run` as our children, readiness by their output;
* `support.ctl`: one `agentroomctl` run, and reading its JSON;
* `support.agent`: a home driven only through agentroomctl, which autostarts its daemon;
* `support.home`: a home whose daemon is our child (kill -9, restart), driven through agentroomctl;
* `support.raw_control`: a blocking client that writes any bytes to a daemon's control socket;
* `support.handlers`: handler scripts (the bundled echo, one-off shell scripts) and what they print;
* `support.fake_cloudflared`: the only fake of an outside program, a `cloudflared` that logs like the real one.
"""
