"""`python -m bench._profiled MODULE ARGS...`: run MODULE as `python -m MODULE ARGS...` would, for measurement.

* With ``$BENCH_PROFILE_OUT``, a cProfile profiler is started by SIGUSR1 and stopped by SIGUSR2, which
  also writes its stats to that file. A bench turns it on once its warm-up is done and off when its
  timed part ends, so the profile holds the measured work only (no imports, no pairing). It counts
  wall time (cProfile's default clock; a CPU clock costs a system call per event and distorts more):
  on a busy machine, time spent descheduled lands on whatever was running, often a socket send.
* With ``$BENCH_CLIENT_SYNCHRONOUS`` (e.g. ``NORMAL``), the daemon's client store runs with that SQLite
  `synchronous` setting instead of FULL: a what-if that prices the fsyncs on the path of a message.
  Benchmarks only; nothing in agentroomd changes.
"""

import cProfile
import os
import runpy
import signal
import sys
from typing import Any


def _patch_client_synchronous(mode: str) -> None:
    from agentroomd.client import store

    original = store.ClientStore.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self._db.execute(f"PRAGMA synchronous={mode}")

    store.ClientStore.__init__ = init  # type: ignore[method-assign]


def main() -> None:
    out = os.environ.get("BENCH_PROFILE_OUT")
    if out:
        profiler = cProfile.Profile()

        def start(signum: int, frame: object) -> None:
            profiler.enable()

        def stop(signum: int, frame: object) -> None:
            profiler.disable()
            profiler.dump_stats(out + ".tmp")
            os.replace(out + ".tmp", out)  # the bench waits for the name: it appears complete

        signal.signal(signal.SIGUSR1, start)
        signal.signal(signal.SIGUSR2, stop)
    mode = os.environ.get("BENCH_CLIENT_SYNCHRONOUS")
    if mode:
        if mode.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise SystemExit(f"BENCH_CLIENT_SYNCHRONOUS: not a synchronous mode: {mode!r}")
        _patch_client_synchronous(mode.upper())
    module, sys.argv = sys.argv[1], sys.argv[1:]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
