"""Shared helpers of the benchmarks: ports, server processes, readiness, Slack signing, statistics.

Everything here talks to 127.0.0.1 only, and every wait is bounded.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent
EXAMPLE_CONFIG = REPO / "chatops.example.yml"
HOST = "127.0.0.1"


def free_port() -> int:
    """A port nothing listens on right now (bound, read, released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def chatops_command() -> list[str]:
    """`chatops` from the interpreter's own environment (the project venv), else `python -m bot`."""
    script = Path(sys.executable).parent / "chatops"
    if script.exists():
        return [str(script)]
    found = shutil.which("chatops")
    return [found] if found else [sys.executable, "-m", "bot"]


def chatops_env(workdir: Path, *, signing_secret: str, db_name: str = "chatops.db") -> dict[str, str]:
    """Environment for `chatops serve`: example config, a fresh SQLite file, a Slack API nobody answers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATOPS_")}
    env.update(
        CHATOPS_CONFIG=str(EXAMPLE_CONFIG),
        CHATOPS_DATABASE_URL=f"sqlite:///{workdir / db_name}",
        CHATOPS_SLACK_SIGNING_SECRET=signing_secret,
        CHATOPS_SLACK_BOT_TOKEN="xoxb-benchmark-" + secrets.token_hex(8),
        # a port that was free a moment ago: outbound Slack calls fail fast and are retried in the background
        CHATOPS_SLACK_API_URL=f"http://{HOST}:{free_port()}/api/",
        CHATOPS_LOG_LEVEL="WARNING",
        CHATOPS_SHUTDOWN_GRACE_SECONDS="2",
        PYTHONUNBUFFERED="1",
    )
    return env


def spawn(argv: Sequence[str], env: dict[str, str], cwd: Path, log_name: str) -> subprocess.Popen[bytes]:
    log = open(cwd / log_name, "ab")  # noqa: SIM115 - handed to the child, closed with it
    try:
        return subprocess.Popen(list(argv), env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        log.close()


def spawn_chatops(port: int, env: dict[str, str], cwd: Path,
                  log_name: str = "chatops.log") -> subprocess.Popen[bytes]:
    # cwd is the temp dir so that no stray .env of the repo is read
    return spawn([*chatops_command(), "serve", "--host", HOST, "--port", str(port)], env, cwd, log_name)


def spawn_bare_bolt(port: int, env: dict[str, str], cwd: Path,
                    log_name: str = "bare_bolt.log") -> subprocess.Popen[bytes]:
    return spawn([sys.executable, str(BENCH_DIR / "bare_bolt_app.py"), "--host", HOST, "--port", str(port)],
                 env, cwd, log_name)


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_ready(proc: subprocess.Popen[bytes], port: int, *, path: str = "/readyz", timeout: float = 30.0,
               interval: float = 0.01, started: float | None = None) -> float:
    """Poll `path` until it answers 200; seconds since `started` (default: now). Raises on exit or timeout."""
    t0 = time.perf_counter() if started is None else started
    deadline = t0 + timeout
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before it was ready")
        try:
            status, _ = http_get(port, path, timeout=1.0)
            if status == 200:
                return time.perf_counter() - t0
        except OSError:
            pass
        time.sleep(interval)
    raise TimeoutError(f"no 200 from {path} on port {port} within {timeout:.0f}s")


def stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM the process (it is its own session leader), SIGKILL its group if it lingers."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --- Slack signing ---------------------------------------------------------------------------------
def slack_headers(secret: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    ts = str(int(time.time()) if timestamp is None else timestamp)
    sig = "v0=" + hmac.new(secret.encode(), b"v0:" + ts.encode() + b":" + body, hashlib.sha256).hexdigest()
    return {"Content-Type": "application/x-www-form-urlencoded", "X-Slack-Request-Timestamp": ts,
            "X-Slack-Signature": sig}


# --- statistics --------------------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); q in [0, 100]."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


# --- /proc -------------------------------------------------------------------------------------------
def children_of(pid: int) -> list[int]:
    """All descendants of pid (via /proc/<pid>/task/*/children)."""
    out: list[int] = []
    todo = [pid]
    while todo:
        current = todo.pop()
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                continue
            for kid in kids:
                if kid not in out:
                    out.append(kid)
                    todo.append(kid)
    return out


def status_kb(pid: int, field: str) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    m = re.search(rf"^{field}:\s+(\d+)\s+kB", text, re.M)
    return int(m.group(1)) if m else 0


def rss_tree_kb(pid: int) -> tuple[int, int]:
    """(VmRSS of pid and all its descendants in kB, number of processes counted)."""
    pids = [pid, *children_of(pid)]
    return sum(status_kb(p, "VmRSS") for p in pids), len(pids)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of pid (all its threads) and its descendants, in seconds."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for p in [pid, *children_of(pid)]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime (fields 14 and 15 of stat)
    return total
