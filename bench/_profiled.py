"""`python -m bench._profiled MODULE ARGS...`: run MODULE as `python -m MODULE ARGS...` would, for measurement.

* With ``$BENCH_PROFILE_OUT``, a cProfile profiler is started by SIGUSR1 and stopped by SIGUSR2, which
  also writes its stats to that file. A bench turns it on once its warm-up is done and off when its
  timed part ends, so the profile holds the measured work only (no imports, no pairing). It counts
  wall time (cProfile's default clock; a CPU clock costs a system call per event and distorts more):
  on a busy machine, time spent descheduled lands on whatever was running, often a socket send.
* With ``$BENCH_CLIENT_NO_FLUSH=1``, the daemon's client store skips the fdatasync of its flushes (commits
  stay crash-safe, not power-safe): a what-if that prices the fsync on the path of a message.
  Benchmarks only; nothing in agentroomd changes.
"""

import cProfile
import os
import runpy
import signal
import sys


def _patch_client_no_flush() -> None:
    from agentroomd.client import store

    store.ClientStore._sync_wal = lambda self: None  # type: ignore[method-assign]


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
    if os.environ.get("BENCH_CLIENT_NO_FLUSH"):
        _patch_client_no_flush()
    module, sys.argv = sys.argv[1], sys.argv[1:]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
