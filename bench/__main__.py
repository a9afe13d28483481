"""Run every benchmark in bench/, print one table of their results, and write bench/results.json.

    .venv/bin/python -m bench [NAME ...]

Each module ``bench/<name>.py`` stays runnable on its own (``python -m bench.<name>``) and prints its
own report; here each runs in its own process (so one that crashes, or leaves servers behind, does
not take the others with it, and none shares an interpreter with the next one's timings), its report
is echoed as it comes, and a closing table gives per benchmark its exit status as a verdict (0 ok,
1 a target missed, anything else an error), its wall time, and the lines of its report that state a
target (the convention both modules follow: a headline result names its target on its line).
A module that returns its results as a dict of rows (`bench.harness.finish`) writes them to the file
named by ``$BENCH_RESULTS_FILE``; its rows (ours, baseline, ratio, target) go into the table instead.
bench/results.json keeps, per benchmark, its verdict, wall time, and its rows or headline lines.

Not run here: `soak` (minutes long; `make soak`) and `harness` (shared code, not a benchmark).

Known benchmarks that are not present yet are listed as such rather than failing the run; any other
module found in bench/ is run too. Exit status 1 when any benchmark that ran did not report ok.
"""

import argparse
import json
import os
import pkgutil
import platform
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import attrs

from bench.harness import RESULTS_ENV, table_lines

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = BENCH_DIR.parent
KNOWN = ("ratchet", "relay", "latency", "throughput", "handlers", "daemon")  # in this order; reported even when missing
NOT_BENCHMARKS = ("soak", "harness")  # `make soak`, and the shared code
TIMEOUT_S = 600  # per benchmark: a hung one must not hang `make bench`
RESULTS_FILE = BENCH_DIR / "results.json"


@attrs.frozen
class Outcome:
    name: str
    verdict: str
    seconds: float | None
    headlines: tuple[str, ...]
    ok: bool
    result: dict[str, Any] | None = None  # the module's own dict, when it writes one


def discover() -> list[str]:
    """Benchmark modules present in bench/, the known ones first."""
    present = sorted(
        info.name
        for info in pkgutil.iter_modules([str(BENCH_DIR)])
        if not info.name.startswith("_") and info.name not in NOT_BENCHMARKS
    )
    return [name for name in KNOWN if name in present] + [name for name in present if name not in KNOWN]


def run_one(name: str) -> Outcome:
    """Run ``python -m bench.<name>``, echoing its output indented, and keep the lines that name a target."""
    print(f"── bench.{name} " + "─" * max(0, 60 - len(name)), flush=True)
    started = time.monotonic()
    headlines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="ar-bench-") as tmp:
        results_file = Path(tmp) / "result.json"
        with subprocess.Popen(
            [sys.executable, "-m", f"bench.{name}"],
            cwd=PROJECT_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            env={**os.environ, RESULTS_ENV: str(results_file)},
        ) as process:
            assert process.stdout is not None
            deadline = threading.Timer(TIMEOUT_S, process.kill)
            deadline.start()
            try:
                for line in process.stdout:
                    print("  " + line, end="", flush=True)
                    if "target" in line.lower():
                        headlines.append(line.rstrip())
                status = process.wait()
            finally:
                deadline.cancel()
        result = json.loads(results_file.read_text()) if results_file.exists() else None
    seconds = time.monotonic() - started
    verdict = {0: "ok", 1: "target missed", -9: f"killed after {TIMEOUT_S} s"}.get(status, f"error (exit {status})")
    headlines = textwrap.dedent("\n".join(headlines)).splitlines()  # keep the module's own alignment
    return Outcome(name, verdict, seconds, tuple(headlines), status == 0, result)


def print_table(outcomes: list[Outcome]) -> None:
    width = max([len("benchmark"), *(len(outcome.name) for outcome in outcomes)])
    print(f"\n{'benchmark':{width}}  {'verdict':15} {'time':>7}  results against targets")
    for outcome in outcomes:
        elapsed = "" if outcome.seconds is None else f"{outcome.seconds:6.1f}s"
        if outcome.result is not None:
            lines = tuple(table_lines(outcome.result["rows"], bench_column=False))[1:]
            lines += tuple(f"note: {note}" for note in outcome.result.get("notes", []))
        else:
            lines = outcome.headlines or ("",)
        print(f"{outcome.name:{width}}  {outcome.verdict:15} {elapsed:>7}  {lines[0]}")
        for extra in lines[1:]:
            print(f"{'':{width}}  {'':15} {'':>7}  {extra}")


def write_results(outcomes: list[Outcome], path: Path = RESULTS_FILE) -> None:
    """Every benchmark's verdict, time, and its rows (or headline lines), with where they were measured."""
    document = {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()},
        "benchmarks": {
            outcome.name: {
                "verdict": outcome.verdict,
                "ok": outcome.ok,
                "seconds": outcome.seconds,
                "rows": outcome.result["rows"] if outcome.result is not None else None,
                "headlines": list(outcome.headlines),
                "result": outcome.result,
            }
            for outcome in outcomes
        },
    }
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all in bench/)")
    args = parser.parse_args(argv)
    present = discover()
    wanted = args.names or [*present, *(name for name in KNOWN if name not in present)]
    outcomes = []
    for name in wanted:
        if name in present:
            outcomes.append(run_one(name))
        else:
            outcomes.append(Outcome(name, "not present", None, (), name in KNOWN))  # asked for by mistake: fail
    print_table(outcomes)
    write_results(outcomes)
    print(f"\nresults written to {RESULTS_FILE.relative_to(PROJECT_ROOT)}")
    return 0 if all(outcome.ok for outcome in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
