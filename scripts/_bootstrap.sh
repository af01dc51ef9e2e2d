# Shared set-up for scripts/test and scripts/demo (sourced, not run).
#
# Makes a fresh machine ready and is quick when it already is:
#   bootstrap_venv       .venv with the package installed editable plus its test extras
#   ensure_postgres      PostgreSQL server binaries (initdb, pg_ctl) for the integration tests
#   ensure_prometheus    the Prometheus server binary (for tests that will need a real one)
#   ensure_alertmanager  the Alertmanager binary (alert intake tests against a real one)
# Debian packages are installed only when missing, and only as root with apt-get.

# shellcheck shell=bash

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO_ROOT/.venv"
VENV_PY="$VENV/bin/python"
STAMP="$VENV/.chatops-installed"   # newer than pyproject.toml: the install is current
MIN_PYTHON="3.11"

say() { printf '%s: %s\n' "${0##*/}" "$*" >&2; }
die() { say "error: $*"; exit 1; }

# --- Python and the virtual environment ------------------------------------------------------

python_ok() {  # is "$1" a Python >= MIN_PYTHON that can make venvs?
    "$1" -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1
}

find_python() {
    local candidate
    for candidate in "${CHATOPS_PYTHON:-}" python3.11 python3.12 python3.13 python3; do
        [ -n "$candidate" ] || continue
        if command -v "$candidate" >/dev/null 2>&1 && python_ok "$candidate"; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

bootstrap_venv() {
    cd "$REPO_ROOT"
    # one bootstrap at a time (scripts/test and scripts/demo may start together); the lock lives
    # outside .venv, which may be removed below
    local lock
    lock="${TMPDIR:-/tmp}/swarm-chatops-bootstrap-$(printf '%s' "$REPO_ROOT" | cksum | cut -d' ' -f1).lock"
    if command -v flock >/dev/null 2>&1; then
        exec 9>"$lock"
        flock 9
    fi
    if [ -e "$VENV_PY" ] && ! python_ok "$VENV_PY"; then
        say ".venv is broken or older than Python $MIN_PYTHON; recreating it"
        rm -rf "$VENV"
    fi
    if [ ! -e "$VENV_PY" ]; then
        local python
        python="$(find_python)" || die "Python $MIN_PYTHON or newer is needed (set CHATOPS_PYTHON to one)"
        say "creating .venv with $python"
        if ! "$python" -m venv "$VENV"; then
            # Debian's own Python ships venv without ensurepip until python3-venv is installed
            rm -rf "$VENV"
            apt_install python3-venv || die "cannot create .venv with $python (is python3-venv installed?)"
            "$python" -m venv "$VENV"
        fi
    fi
    if [ ! -e "$STAMP" ] || [ "$REPO_ROOT/pyproject.toml" -nt "$STAMP" ]; then
        say "installing swarm-chatops and its test tools into .venv (pip install -e '.[test]')"
        # pip's (and the build backend's) chatter goes to a log, shown only when the install fails
        if ! "$VENV_PY" -m pip install --disable-pip-version-check -e "$REPO_ROOT[test]" >"$VENV/pip.log" 2>&1; then
            cat "$VENV/pip.log" >&2
            die "pip install failed (log above, also in .venv/pip.log)"
        fi
        touch "$STAMP"
    fi
    if command -v flock >/dev/null 2>&1; then
        exec 9>&-
    fi
}

# --- Debian packages ----------------------------------------------------------------------------

_APT_UPDATED=""

apt_install() {  # apt_install PACKAGE... (root with apt-get only; `apt-get update` once first)
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        return 1
    fi
    if [ -z "$_APT_UPDATED" ]; then
        say "apt-get update"
        apt-get update -qq >&2
        _APT_UPDATED=1
    fi
    say "apt-get install -y $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
}

find_tool() {  # find_tool BINARY [DIRS_FUNCTION]: print BINARY's path (PATH, then the dirs listed)
    local binary="$1" dirs_fn="${2:-}" dir
    if command -v "$binary" >/dev/null 2>&1; then
        command -v "$binary"
        return 0
    fi
    [ -n "$dirs_fn" ] || return 1
    while IFS= read -r dir; do
        if [ -n "$dir" ] && [ -x "$dir/$binary" ]; then
            printf '%s\n' "$dir/$binary"
            return 0
        fi
    done < <("$dirs_fn")
    return 1
}

ensure_tool() {  # ensure_tool BINARY DEBIAN_PACKAGE [DIRS_FUNCTION]: find it, else install the package
    local binary="$1" package="$2" dirs_fn="${3:-}"
    find_tool "$binary" "$dirs_fn" >/dev/null && return 0
    say "$binary not found; installing the Debian package $package"
    apt_install "$package" \
        || die "$binary is missing and cannot be installed here (needs root and apt-get): install $package"
    find_tool "$binary" "$dirs_fn" >/dev/null || die "$package is installed but $binary is still not found"
}

pg_bindirs() {  # where Debian (and pg_config) put the PostgreSQL server binaries, newest first
    local dir
    for dir in /usr/lib/postgresql/*/bin; do
        [ -d "$dir" ] && printf '%s\n' "$dir"
    done | sort -V -r
    if command -v pg_config >/dev/null 2>&1; then
        pg_config --bindir 2>/dev/null || true
    fi
}

ensure_postgres() {  # the throwaway clusters of tests/harness/postgres.py need initdb and pg_ctl
    ensure_tool initdb postgresql pg_bindirs
}

ensure_prometheus() {  # for tests against a real Prometheus server (Debian package `prometheus`)
    ensure_tool prometheus prometheus
}

ensure_alertmanager() {  # for tests against a real Alertmanager (Debian package `prometheus-alertmanager`)
    ensure_tool prometheus-alertmanager prometheus-alertmanager
}
