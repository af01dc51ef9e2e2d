"""Cold start and idle memory of `chatops serve`, next to baselines measured in the same run.

  * cold start: from spawning `chatops serve` (a fresh temporary SQLite file each time, so the
    migrations run at start) until GET /readyz answers 200, polled every 10 ms, at most 30 s;
    repeated (default 5) and the median taken;
  * idle memory: VmRSS from /proc/<pid>/status (the process and any children) after readiness
    and ~2 s without traffic.

Baselines, same run, same interpreter:
  * `python -c "import uvicorn, starlette"`: interpreter plus the HTTP stack, start to exit;
  * the bare Bolt app of benchmarks/bare_bolt_app.py (slack_bolt + Starlette + uvicorn): spawn
    until its /readyz answers, and its idle VmRSS.

    .venv/bin/python benchmarks/footprint.py [--runs 5] [--idle 2]

The last line is `cold_start_s=<median seconds> idle_rss_mb=<median MB>`.
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402


def measure_server(kind: str, workdir: Path, idle: float, secret: str) -> tuple[float, float, int, float]:
    """(seconds from spawn to the first 200 from /readyz, idle RSS in MB, processes counted,
    CPU seconds the server used until ready: less sensitive than wall time to a busy machine)."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = c.chatops_env(workdir, signing_secret=secret)  # a fresh database file in a fresh dir
    port = c.free_port()
    t0 = time.perf_counter()
    proc = c.spawn_chatops(port, env, workdir) if kind == "chatops" else c.spawn_bare_bolt(port, env, workdir)
    try:
        try:
            took = c.wait_ready(proc, port, timeout=30.0, interval=0.01, started=t0)
        except (RuntimeError, TimeoutError) as exc:
            log = "chatops.log" if kind == "chatops" else "bare_bolt.log"
            raise SystemExit(f"{kind} did not become ready: {exc}\n{c.tail(workdir / log)}") from None
        cpu = c.cpu_seconds(proc.pid)
        time.sleep(idle)
        kb, nproc = c.rss_tree_kb(proc.pid)
        return took, kb / 1024, nproc, cpu
    finally:
        c.stop(proc)


def measure_import_baseline() -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import uvicorn, starlette"], check=True, timeout=30)
    return time.perf_counter() - t0


def measure_cli_help() -> float:
    t0 = time.perf_counter()
    subprocess.run([*c.chatops_command(), "--help"], check=True, timeout=30, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser(description="cold start and idle RSS of `chatops serve`")
    p.add_argument("--runs", type=int, default=5, help="repetitions (median reported)")
    p.add_argument("--idle", type=float, default=2.0, help="seconds idle after readiness before reading RSS")
    args = p.parse_args()

    secret = secrets.token_hex(16)
    tmp = Path(tempfile.mkdtemp(prefix="chatops-footprint-"))
    results: dict[str, list[tuple[float, float, int, float]]] = {"chatops": [], "bare-bolt": []}
    imports: list[float] = []
    cli_help: list[float] = []
    try:
        # warm the page cache once (first-ever import of a big tree is disk-bound, not ours to measure)
        measure_import_baseline()
        measure_server("chatops", tmp / "warm", 0.0, secret)
        for i in range(args.runs):  # alternate, so machine noise falls on both
            results["chatops"].append(measure_server("chatops", tmp / f"chatops-{i}", args.idle, secret))
            results["bare-bolt"].append(measure_server("bare-bolt", tmp / f"bare-{i}", args.idle, secret))
            imports.append(measure_import_baseline())
            cli_help.append(measure_cli_help())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def med(kind: str, idx: int) -> float:
        return c.median([r[idx] for r in results[kind]])

    ours_start, ours_rss = med("chatops", 0), med("chatops", 1)
    base_start, base_rss = med("bare-bolt", 0), med("bare-bolt", 1)
    imp = c.median(imports)
    print(f"{args.runs} runs each, alternating; medians (min..max); wall = spawn until /readyz 200")
    print()
    print(f"  {'':40} {'wall s':>18}  {'CPU s':>6}  {'idle VmRSS MB':>15}")
    for kind, label in (("chatops", "chatops serve (fresh DB, migrations)"), ("bare-bolt", "bare Bolt app")):
        starts = [r[0] for r in results[kind]]
        rss = [r[1] for r in results[kind]]
        procs = max(r[2] for r in results[kind])
        print(f"  {label:40} {med(kind, 0):6.3f} ({min(starts):.2f}..{max(starts):.2f})  "
              f"{med(kind, 3):6.3f}  {med(kind, 1):6.1f} ({min(rss):.0f}..{max(rss):.0f})  "
              f"[{procs} process(es)]")
    label = 'python -c "import uvicorn, starlette"'
    print(f"  {label:40} {imp:6.3f} ({min(imports):.2f}..{max(imports):.2f})   (start to exit)")
    label = "chatops --help"
    print(f"  {label:40} {c.median(cli_help):6.3f} ({min(cli_help):.2f}..{max(cli_help):.2f})"
          "   (start to exit)")
    print()
    print("ratios (chatops / baseline):")
    print(f"  cold start, wall   vs bare Bolt app                {ours_start / base_start:.2f}")
    cpu_ratio = med("chatops", 3) / med("bare-bolt", 3)
    print(f"  cold start, CPU    vs bare Bolt app                {cpu_ratio:.2f}")
    print(f"  cold start, wall   vs import uvicorn+starlette     {ours_start / imp:.2f}")
    print(f"  idle VmRSS         vs bare Bolt app                {ours_rss / base_rss:.2f}")
    print()
    print("targets: cold start < 2 s, idle RSS < 150 MB")
    print(f"cold_start_s={ours_start:.3f} idle_rss_mb={ours_rss:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
