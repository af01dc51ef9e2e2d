"""A throwaway PostgreSQL cluster for integration tests.

:class:`PostgresServer` runs ``initdb`` + ``pg_ctl`` in a fresh temporary directory, listening only on
``127.0.0.1`` on a free port with ``trust`` auth and ``fsync=off``; its Unix socket lives inside the temp
dir.  When running as root the server processes run as the ``postgres`` OS user (via ``runuser``, else
``su``); otherwise as the current user.  ``stop()`` shuts the cluster down and deletes the directory.

Binaries are looked up in ``$CHATOPS_TEST_PG_BINDIR``, then the newest ``/usr/lib/postgresql/<ver>/bin``,
then ``pg_config --bindir``, then ``initdb`` on ``PATH``.

Policy for the test suite, :func:`postgres_url_or_skip_reason`:

1. ``$CHATOPS_TEST_DATABASE_URL`` set -> use it (``postgresql://`` is rewritten to ``postgresql+psycopg://``);
2. else PostgreSQL binaries found -> start one shared cluster for the process (stopped at exit);
3. else -> ``(None, reason)`` so the caller can skip.

Wiring it into ``tests/conftest.py`` (a session fixture; tests marked ``postgres`` request it)::

    import pytest
    from tests.harness.postgres import postgres_session, shared_server

    @pytest.fixture(scope="session")
    def postgres_url():
        yield from postgres_session()          # skips when no database is available

    @pytest.fixture
    def fresh_db_url(postgres_url, request):
        server = shared_server()               # None when CHATOPS_TEST_DATABASE_URL is used
        if server is None:
            return postgres_url
        return server.create_database(f"t_{abs(hash(request.node.nodeid))}")

Standalone::

    with PostgresServer() as pg:
        engine = sqlalchemy.create_engine(pg.url)
"""

from __future__ import annotations

import atexit
import os
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

ENV_URL = "CHATOPS_TEST_DATABASE_URL"
ENV_BINDIR = "CHATOPS_TEST_PG_BINDIR"
DEFAULT_DATABASE = "chatops_test"
SUPERUSER = "postgres"
PG_OS_USER = "postgres"
_REQUIRED = ("initdb", "pg_ctl", "pg_isready", "createdb", "postgres")
# Log lines meaning the postmaster gave up (pg_isready itself causes harmless "starting up" FATALs).
_FATAL_MARKERS = ("could not bind", "could not create any TCP/IP sockets", "database system is shut down",
                  "could not create lock file", "PANIC")
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class PostgresUnavailable(RuntimeError):
    """PostgreSQL binaries are missing or the cluster could not be started."""


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path.parent.name)) or (0,)


def _candidate_bindirs() -> Iterator[Path]:
    if os.environ.get(ENV_BINDIR):
        yield Path(os.environ[ENV_BINDIR])
    yield from sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
    if shutil.which("pg_config"):
        try:
            out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, timeout=10)
            if out.returncode == 0 and out.stdout.strip():
                yield Path(out.stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    initdb = shutil.which("initdb")
    if initdb:
        yield Path(initdb).resolve().parent


def find_pg_bindir() -> Path | None:
    """The first candidate directory holding every server/client binary the harness needs."""
    for bindir in _candidate_bindirs():
        if all(os.access(bindir / name, os.X_OK) for name in _REQUIRED):
            return bindir
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _clean_env() -> dict[str, str]:
    """The environment without ``PG*`` variables that could redirect client tools."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def normalize_url(url: str) -> str:
    """Rewrite ``postgres://`` / ``postgresql://`` URLs to SQLAlchemy's psycopg 3 dialect."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


class PostgresServer:
    """A private PostgreSQL cluster in a temp dir; usable as a context manager."""

    def __init__(
        self,
        bindir: str | Path | None = None,
        *,
        database: str = DEFAULT_DATABASE,
        startup_timeout: float = 30.0,
        base_dir: str | None = None,
    ) -> None:
        if not _NAME_RE.match(database):
            raise ValueError(f"invalid database name {database!r}")
        self._bindir = Path(bindir) if bindir is not None else None
        self.database = database
        self.startup_timeout = startup_timeout
        self._base_dir = base_dir
        self.host = "127.0.0.1"
        self.port: int | None = None
        self.tmpdir: Path | None = None

    # ------------------------------------------------------------------ helpers
    @property
    def bindir(self) -> Path:
        if self._bindir is None:
            self._bindir = find_pg_bindir()
            if self._bindir is None:
                raise PostgresUnavailable("no PostgreSQL binaries found")
        return self._bindir

    @property
    def datadir(self) -> Path:
        assert self.tmpdir is not None, "server not started"
        return self.tmpdir / "data"

    @property
    def running(self) -> bool:
        return self.port is not None

    def _owner_cmd(self, args: list[str]) -> list[str]:
        """Wrap a server-side command so it runs as the ``postgres`` OS user when we are root."""
        if os.geteuid() != 0:
            return args
        if shutil.which("runuser"):
            return ["runuser", "-u", PG_OS_USER, "--", *args]
        return ["su", PG_OS_USER, "-s", "/bin/sh", "-c", shlex.join(args)]

    def _run(self, args: list[str], *, as_owner: bool = False, timeout: float = 120.0) -> str:
        cmd = self._owner_cmd(args) if as_owner else args
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=_clean_env(), cwd=self.tmpdir,
            stdin=subprocess.DEVNULL,
        )
        if proc.returncode != 0:
            output = f"{proc.stdout}{proc.stderr}"
            raise PostgresUnavailable(f"{shlex.join(cmd)} failed ({proc.returncode}):\n{output}")
        return proc.stdout

    def _client(self, tool: str, *args: str) -> list[str]:
        assert self.port is not None, "server not started"
        return [str(self.bindir / tool), "-h", self.host, "-p", str(self.port), "-U", SUPERUSER, *args]

    def _log_tail(self, lines: int = 30) -> str:
        log = self.tmpdir / "postgres.log" if self.tmpdir else None
        if log is None or not log.exists():
            return "(no log)"
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])

    # ------------------------------------------------------------------ public API
    def url_for(self, database: str) -> str:
        """SQLAlchemy URL of ``database`` on this cluster."""
        if self.port is None:
            raise RuntimeError("PostgresServer is not started")
        return f"postgresql+psycopg://{SUPERUSER}@{self.host}:{self.port}/{database}"

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the default database (``.../chatops_test`` unless configured)."""
        return self.url_for(self.database)

    def create_database(self, name: str) -> str:
        """Create database ``name`` and return its SQLAlchemy URL."""
        if not _NAME_RE.match(name):
            raise ValueError(f"invalid database name {name!r}")
        self._run(self._client("createdb", name))
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name`` (closing its connections first)."""
        if not _NAME_RE.match(name):
            raise ValueError(f"invalid database name {name!r}")
        self._run(self._client("dropdb", "--if-exists", "--force", name))

    def start(self) -> PostgresServer:
        """initdb, start and wait until the server accepts connections; create the default database."""
        if self.running:
            return self
        bindir = self.bindir
        self.tmpdir = Path(tempfile.mkdtemp(prefix="chatops-pg-", dir=self._base_dir))
        try:
            (self.tmpdir / "sock").mkdir()
            if os.geteuid() == 0:
                for path in (self.tmpdir, self.tmpdir / "sock"):
                    shutil.chown(path, PG_OS_USER, PG_OS_USER)
            initdb = [str(bindir / "initdb"), "-D", str(self.datadir), "-U", SUPERUSER, "-A", "trust"]
            self._run([*initdb, "-E", "UTF8", "--locale=C", "--no-sync"], as_owner=True)
            hba = "local all all trust\nhost all all 127.0.0.1/32 trust\n"
            (self.datadir / "pg_hba.conf").write_text(hba)
            with open(self.datadir / "postgresql.conf", "a") as conf:
                conf.write("\ninclude 'harness.conf'\n")
            last_error: Exception | None = None
            for _attempt in range(3):  # a free port can be taken between probing and binding
                try:
                    self._start_on(_free_port())
                    break
                except PostgresUnavailable as exc:
                    last_error = exc
            else:
                raise last_error or PostgresUnavailable("could not start PostgreSQL")
            self._run(self._client("createdb", self.database))
        except BaseException:
            self.stop()
            raise
        atexit.register(self.stop)
        return self

    def _start_on(self, port: int) -> None:
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(port),
            "unix_socket_directories": f"'{self.tmpdir / 'sock'}'",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "logging_collector": "off",
        }
        harness_conf = self.datadir / "harness.conf"
        harness_conf.write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
        if os.geteuid() == 0:
            shutil.chown(harness_conf, PG_OS_USER, PG_OS_USER)
        assert self.tmpdir is not None
        log = self.tmpdir / "postgres.log"
        if log.exists():
            log.unlink()
        self._run([str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-l", str(log), "-W", "start"],
                  as_owner=True)
        self.port = port
        deadline = time.monotonic() + self.startup_timeout
        while True:
            ready = subprocess.run(
                self._client("pg_isready", "-d", "postgres", "-t", "1"),
                capture_output=True, env=_clean_env(), stdin=subprocess.DEVNULL,
            )
            if ready.returncode == 0:
                return
            tail = self._log_tail()
            if any(marker in tail for marker in _FATAL_MARKERS) or time.monotonic() > deadline:
                self._pg_ctl_stop("immediate")
                self.port = None
                raise PostgresUnavailable(f"PostgreSQL did not become ready on port {port}:\n{tail}")
            time.sleep(0.05)  # bounded readiness poll

    def _pg_ctl_stop(self, mode: str) -> bool:
        pg_ctl = [str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w", "-t", "30", "stop"]
        proc = subprocess.run(
            self._owner_cmd(pg_ctl),
            capture_output=True,
            env=_clean_env(),
            cwd=self.tmpdir,
            stdin=subprocess.DEVNULL,
        )
        return proc.returncode == 0

    def stop(self) -> None:
        """Stop the server (fast, then immediate) and delete its directory. Idempotent."""
        atexit.unregister(self.stop)
        if self.tmpdir is None:
            return
        if (self.datadir / "postmaster.pid").exists() and not self._pg_ctl_stop("fast"):
            self._pg_ctl_stop("immediate")
        self.port = None
        shutil.rmtree(self.tmpdir, ignore_errors=True)
        self.tmpdir = None

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------------- suite-wide policy
_lock = threading.Lock()
_shared: PostgresServer | None = None
_shared_result: tuple[str | None, str | None] | None = None


def postgres_url_or_skip_reason() -> tuple[str | None, str | None]:
    """``(url, None)`` for a usable database, else ``(None, reason)``. Starts at most one shared cluster."""
    global _shared, _shared_result
    env_url = os.environ.get(ENV_URL)
    if env_url:
        return normalize_url(env_url), None
    with _lock:
        if _shared_result is None:
            bindir = find_pg_bindir()
            if bindir is None:
                _shared_result = (None, f"no PostgreSQL binaries found; install postgresql or set {ENV_URL}")
            else:
                server = PostgresServer(bindir)
                try:
                    _shared = server.start()
                    _shared_result = (server.url, None)
                except (PostgresUnavailable, OSError, subprocess.SubprocessError, LookupError) as exc:
                    _shared_result = (None, f"could not start a throwaway PostgreSQL from {bindir}: {exc}")
        return _shared_result


def shared_server() -> PostgresServer | None:
    """The cluster started by :func:`postgres_url_or_skip_reason`, if any."""
    return _shared


def stop_shared_server() -> None:
    """Stop the shared cluster (if any) and forget the cached policy result."""
    global _shared, _shared_result
    with _lock:
        if _shared is not None:
            _shared.stop()
        _shared, _shared_result = None, None


def postgres_session() -> Iterator[str]:
    """Body of a pytest session fixture: yield a database URL (or skip), then stop the shared cluster."""
    import pytest

    url, reason = postgres_url_or_skip_reason()
    if url is None:
        pytest.skip(reason or "PostgreSQL unavailable")
    try:
        yield url
    finally:
        stop_shared_server()
