"""`chatops console`: the same commands and buttons as Slack, in a terminal, on embedded defaults.

Lines: a slash command as typed in Slack; `as <user>` switches the acting person; `click <label>`
presses a button on the latest message that has it; `sim …` steers the simulated backends; `wait`
waits for the deploy runs the bot is working on; `show` prints the latest message whole; `help` lists
all of these; `#` starts a comment. Messages the bot posts or shows ephemerally are rendered as text;
an update to a message prints only the lines that changed (nothing when only an elapsed time moved on).
Output that arrives while the interactive console waits at its prompt is followed by the prompt again.
With `--script FILE` every line is echoed and run; the run stops with exit code 1 at a line that fails
(unknown command, no such button, unknown person, bad `sim` or `wait` arguments) after the bot's
background work has settled.
"""

from __future__ import annotations

import difflib
import itertools
import json
import math
import re
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

from sqlalchemy import select

from bot.container import Container, build
from bot.core.model import ActionInvocation, Actor, Invocation
from bot.core.runs.states import ACTIVE, RunState
from bot.errors import UnknownCommand
from bot.outbox import Delivered, PermanentError
from bot.persistence.models import Run, RunStep
from bot.render import buttons_of, render
from bot.settings import Settings

RESPONSE_PREFIX = "console://respond/"


def plural(n: int, one: str, many: str | None = None) -> str:
    """`1 line`, `2 lines`, `0 lines` (`many` for irregular plurals)."""
    return f"{n} {one if n == 1 else (many or one + 's')}"


# an elapsed time as messages print it: 7s, 1m5s, 2h, 1h30m ...
_DURATION = re.compile(r"\b(?:\d+h)?(?:\d+m)?\d+s\b|\b(?:\d+h)?\d+m\b|\b\d+h\b")


def _without_durations(line: str) -> str:
    return _DURATION.sub("…", line)


def changed_lines(before: list[str], after: list[str]) -> tuple[list[str], list[str]]:
    """What an update changed, as (lines new or changed in `after`, lines removed without a replacement).

    A line whose only difference from the line it replaces is an elapsed time (`(5s)` → `(6s)`) is not
    a change worth printing; `show` prints the whole message.
    """
    added: list[str] = []
    removed: list[str] = []
    matcher = difflib.SequenceMatcher(a=before, b=after, autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "delete":
            removed += before[i1:i2]
        elif op in ("insert", "replace"):
            old = {_without_durations(line) for line in before[i1:i2]}
            added += [line for line in after[j1:j2] if _without_durations(line) not in old]
    return added, removed


def _title(rendered: list[str]) -> str:
    first = next((line.strip() for line in rendered if line.strip()), "")
    first = first.strip("= ").strip()
    return first if len(first) <= 60 else first[:59] + "…"


@dataclass
class ShownMessage:
    channel: str | None
    ts: str
    text: str
    blocks: list[dict[str, Any]] | None
    ephemeral_to: str | None = None
    response_url: str | None = None
    history: list[str] = field(default_factory=list)


class ConsoleTransport:
    """Delivers outbox calls to the terminal instead of Slack (and remembers them for `click`).

    Every write goes through `write()`, under one lock: while the interactive console waits at its
    prompt (`prompt` is set), output starts on a fresh line and the prompt is printed again after it.
    """

    def __init__(self, out: TextIO, names: dict[str, str]) -> None:
        self.out = out
        self.names = names
        self.messages: list[ShownMessage] = []
        self._by_ts: dict[str, ShownMessage] = {}
        self._ts = itertools.count(1)
        self._lock = threading.RLock()
        self._prompt: str | None = None
        self._told_about_show = False
        self._last_update: str | None = None  # ts of the message whose update was the last thing printed

    def _new_ts(self) -> str:
        return f"{int(time.time())}.{next(self._ts):06d}"

    def write(self, text: str, *, update_of: str | None = None) -> None:
        """Print `text`; `update_of` names the message whose changed lines `text` is."""
        with self._lock:
            if self._prompt is not None:  # the cursor sits after the prompt: leave its line, then give it back
                self.out.write("\n" + text + self._prompt)
                self._last_update = None
            else:
                self.out.write(text)
                self._last_update = update_of
            self.out.flush()

    def set_prompt(self, prompt: str | None) -> None:
        """Print `prompt` and remember it while input is awaited; None once a line was read."""
        with self._lock:
            self._prompt = prompt
            if prompt is not None:
                self.out.write(prompt)
                self.out.flush()

    def print(self, header: str, text: str, blocks: list[dict[str, Any]] | None) -> None:
        self.write(f"{header}\n{render(text, blocks, self.names.get)}\n")

    def show(self, msg: ShownMessage, header: str) -> None:
        with self._lock:
            self.messages.append(msg)
            self._by_ts[msg.ts] = msg
        self.print(header, msg.text, msg.blocks)

    def _update(self, channel: str | None, ts: str, text: str, blocks: list[dict[str, Any]] | None) -> None:
        with self._lock:
            msg = self._by_ts.get(ts)
            if msg is None:
                raise PermanentError("message_not_found")
            before = render(msg.text, msg.blocks, self.names.get).splitlines()
            msg.text, msg.blocks = text, blocks
            self.messages.remove(msg)  # the updated message is now the latest one with its buttons
            self.messages.append(msg)
            after = render(text, blocks, self.names.get).splitlines()
            added, removed = changed_lines(before, after)
            if not added and not removed:
                return  # nothing a reader would see has changed
            lines = "".join(line + "\n" for line in added + [f"  (removed) {line.strip()}" for line in removed])
            if self._last_update == ts and self._prompt is None:
                self.write(lines, update_of=ts)  # more changes to the message just printed: no new header
                return
            hint = ""
            if not self._told_about_show:
                self._told_about_show, hint = True, " (changed lines only; `show` prints it whole)"
            self.write(f"[#{channel}] updated “{_title(after)}”{hint}:\n" + lines, update_of=ts)

    def deliver(self, kind: str, channel: str | None, payload: dict[str, Any]) -> Delivered:
        text, blocks = str(payload.get("text", "")), payload.get("blocks")
        if kind == "post":
            ts = self._new_ts()
            where = f"#{channel}" + (" (thread)" if payload.get("thread_ts") else "")
            self.show(ShownMessage(channel, ts, text, blocks), f"[{where}] bot posted:")
            return Delivered(channel, ts)
        if kind == "update":
            self._update(channel, payload["ts"], text, blocks)
            return Delivered(channel, payload["ts"])
        if kind == "ephemeral":
            user = self.names.get(payload["user"], payload["user"])
            self.show(ShownMessage(channel, self._new_ts(), text, blocks, ephemeral_to=payload["user"]),
                      f"[#{channel}] only visible to {user}:")
            return Delivered(channel)
        if kind == "respond":
            url = payload.get("response_url", "")
            if payload.get("replace_original"):
                with self._lock:
                    old = next((m for m in reversed(self.messages) if m.response_url == url), None)
                    if old is not None:
                        self.messages.remove(old)
            label = "replaced" if payload.get("replace_original") else "only visible to you"
            self.show(ShownMessage(channel, self._new_ts(), text, blocks, ephemeral_to="you", response_url=url),
                      f"[{label}]:")
            return Delivered(channel)
        if kind == "home":
            self.print("[App Home updated]", "", payload.get("view", {}).get("blocks"))
            return Delivered()
        if kind == "create_channel":  # an incident channel: the first name asked for, with a console id
            cid = f"C0INC{next(self._ts):04d}"
            self.write(f"[#{cid}] channel #{payload['names'][0]} created\n")
            return Delivered(cid)
        if kind == "invite":
            people = [self.names.get(u, u) for u in payload.get("users", [])]
            people += [f"user group {g}" for g in payload.get("usergroups", [])]
            self.write(f"[#{channel}] invited: {', '.join(people) or 'nobody'}\n")
            return Delivered(channel)
        raise PermanentError(f"unknown kind {kind}")

    def latest(self) -> ShownMessage | None:
        with self._lock:
            return self.messages[-1] if self.messages else None

    def button_labels(self) -> list[str]:
        """Labels of the buttons on screen, newest message first, each once."""
        labels: list[str] = []
        with self._lock:
            for msg in reversed(self.messages):
                for button in buttons_of(msg.blocks):
                    label = str(button.get("text", {}).get("text", "")).strip()
                    if label and label not in labels:
                        labels.append(label)
        return labels

    def find_button(self, label: str) -> tuple[ShownMessage, dict[str, Any]] | None:
        wanted = label.strip().lower()
        with self._lock:
            for msg in reversed(self.messages):
                for button in buttons_of(msg.blocks):
                    if str(button.get("text", {}).get("text", "")).strip().lower() == wanted:
                        return msg, button
        return None


class LineFailed(Exception):
    pass


@dataclass(frozen=True)
class RunView:
    """An active deploy run as `wait` and `click` see it."""

    id: str
    state: str
    step: str | None  # the step in progress, if any
    waiting_for: str | None  # what a person must do before the run can go on; None while the bot works
    coming_buttons: frozenset[str]  # labels (lower case) the run will show without anyone clicking first


@dataclass(frozen=True)
class Knob:
    metric: str
    kind: str  # "ratio" (0-1, or a percentage) | "ms"
    meaning: str


HELP = """Console lines:
  /COMMAND [ARGS]            a slash command, as typed in Slack (/help lists them)
  as PERSON                  act as someone from the config's people ({people})
  click LABEL                press the button LABEL on the newest message that has it
  show                       print the newest message whole (updates print only their changed lines)
  wait [RUN] [SECONDS]       wait until the bot has nothing left to do on the active deploy runs (or on
                             RUN, e.g. r-1a2b3c4d) without a person: finished, or waiting for an approval
                             or a tick; gives up after SECONDS (default 120, at most 3600)
{sim}
  help                       this list
  quit                       leave (also exit or Ctrl-D)
  # …                        a comment
"""

SIM_HELP = """  sim KNOB VALUE [ENV]       steer the simulated backends of ENV (default: the default environment):
    sim error-rate RATE        share of requests answered 5xx: a fraction 0–1 (0.2) or a percentage
                               (20%); default 0.002 (0.2 %)
    sim order-success RATE     share of orders that succeed: 0–1 or a percentage; default 0.998
    sim latency-ms MS          p95 latency in milliseconds, 0–600000; default 180
    sim nodata on|off          Prometheus answers with no data (analysis inconclusive)
    sim prometheus down|up     Prometheus unreachable, or back
    sim fail-rollout           the next rollout stalls and hits its progress deadline
    sim fail-job JOB           Jobs of this name (one of the environment's jobs) fail from now on
    sim trading MODE           the trading API: ok, slow, hang, fail (503) or lie (says stopped, keeps trading)
  sim alert fire NAME [--severity S] [--env E]   Alertmanager fires alert NAME (default high, the default
                             environment) through the webhook's unit of work: a root message and its thread
  sim alert resolve NAME     Alertmanager resolves it"""


class Console:
    SIM_KNOBS = {
        "error-rate": Knob("error_rate", "ratio", "error rate"),
        "order-success": Knob("order_success", "ratio", "order success"),
        "latency-ms": Knob("p95_latency_ms", "ms", "p95 latency"),
    }
    MAX_LATENCY_MS = 600_000.0
    DEFAULT_WAIT = 120.0
    MAX_WAIT = 3600.0

    def __init__(self, container: Container, transport: ConsoleTransport, out: TextIO, *,
                 settle_seconds: float = 10.0) -> None:
        self.c = container
        self.fired_alerts: dict[str, tuple[str, str | None, datetime]] = {}  # sim alert: name -> how it fired
        self.t = transport
        self.out = out
        self.settle_seconds = settle_seconds
        self.run_settle_seconds = 300.0
        self.actor_name = next(iter(container.config.people))
        self._n = itertools.count(1)

    @property
    def actor(self) -> Actor:
        return Actor(self.c.config.people[self.actor_name], self.actor_name)

    def say(self, text: str) -> None:
        self.t.write(text if text.endswith("\n") else text + "\n")

    def settle(self) -> bool:
        """Wait (bounded) until background tasks and the outbox are idle."""
        deadline = time.monotonic() + self.settle_seconds
        while time.monotonic() < deadline:
            if (self.c.writer.drain(max(0.0, deadline - time.monotonic()))
                    and self.c.tasks.drain(max(0.0, deadline - time.monotonic()))
                    and self.c.worker.pending_due() == 0):
                if self.c.tasks.in_flight == 0:
                    return True
            self.c.worker.wakeup.set()
            time.sleep(0.02)
        return False

    def help_text(self) -> str:
        return HELP.format(people=", ".join(self.c.config.people), sim=SIM_HELP)

    def run_line(self, line: str) -> None:
        line = line.strip()
        if not line or line.startswith("#"):
            return
        word = line.split()[0]
        if line.startswith("/"):
            self._command(line)
        elif word == "as":
            self._switch(line[2:].strip())
        elif word == "click":
            self._click(line[5:].strip())
        elif word == "sim" and line.split()[1:2] == ["alert"]:
            self._sim_alert(line.split()[2:])
        elif word == "sim":
            self._sim(line.split()[1:])
        elif word == "wait":
            self._wait(line.split()[1:])
        elif line == "show":
            msg = self.t.latest()
            if msg is None:
                raise LineFailed("no message to show yet")
            self.t.print(f"[#{msg.channel}] latest message:", msg.text, msg.blocks)
        elif line in ("help", "?"):
            self.say(self.help_text())
        else:
            raise LineFailed(f"not a command: {line!r} (type `help` for the console's lines, /help for the "
                             "bot's commands)")

    def _command(self, line: str) -> None:
        name, _, text = line[1:].partition(" ")
        n = next(self._n)
        inv = Invocation(command=name, text=text.strip(), actor=self.actor, channel_id="C0CONSOLE",
                         idempotency_key=f"console:{id(self)}:{n}", response_url=f"{RESPONSE_PREFIX}{n}",
                         source="console")
        prepared = self.c.dispatcher.prepare(inv)
        self.c.dispatcher.launch(prepared, self.c.tasks)
        if prepared.ack is not None:
            self.t.show(ShownMessage("C0CONSOLE", self.t._new_ts(), prepared.ack.text, prepared.ack.blocks,
                                     ephemeral_to=self.actor_name, response_url=inv.response_url),
                        "[only visible to you]:")
        if name.lower() not in self.c.dispatcher.commands and name.lower() not in self.c.dispatcher.aliases:
            self.settle()
            raise LineFailed(str(UnknownCommand(f"unknown command /{name}")))

    # --- sim ----------------------------------------------------------------------------------------
    def _sim_env(self, words: list[str]) -> tuple[str, list[str]]:
        """The environment a `sim` line names last (or the default one), and the words before it."""
        envs = list(self.c.sims)
        if words and words[-1] in self.c.sims:
            return words[-1], words[:-1]
        resolved = self.c.config.resolve_env(None)
        if resolved is None:
            raise LineFailed(f"sim: name the environment last (one of {', '.join(envs)}); there is no default")
        return resolved[0], words

    def _ratio(self, knob: Knob, raw: str) -> float:
        text = raw.strip()
        percent = text.endswith("%")
        try:
            value = float(text[:-1] if percent else text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise LineFailed(f"sim: {knob.meaning} must be a number: a fraction from 0 to 1 (0.2) or a "
                             f"percentage (20%), not {raw!r}")
        if percent:
            if not 0.0 <= value <= 100.0:
                raise LineFailed(f"sim: {knob.meaning} {raw} is out of range: a percentage goes from 0% to 100%")
            return value / 100.0
        if not 0.0 <= value <= 1.0:
            hint = f" (did you mean {value:g}%, i.e. {value / 100:g}?)" if 1.0 < value <= 100.0 else ""
            raise LineFailed(f"sim: {knob.meaning} {raw} is out of range: give a fraction from 0 to 1 "
                             f"(0.05 = 5 %) or a percentage with %{hint}")
        return value

    def _milliseconds(self, knob: Knob, raw: str) -> float:
        try:
            value = float(raw.removesuffix("ms"))
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise LineFailed(f"sim: {knob.meaning} must be a number of milliseconds (e.g. 1500), not {raw!r}")
        if not 0.0 <= value <= self.MAX_LATENCY_MS:
            raise LineFailed(f"sim: {knob.meaning} {raw} ms is out of range: 0 to {self.MAX_LATENCY_MS:.0f} ms")
        return value

    @staticmethod
    def _switch_word(raw: str, on: str, off: str, what: str) -> bool:
        if raw not in (on, off):
            raise LineFailed(f"sim: {what} takes {on} or {off}, not {raw!r}")
        return raw == on

    def _sim_alert(self, words: list[str]) -> None:
        """`sim alert fire|resolve NAME [--severity S] [--env E]`: a realistic notification, through the intake."""
        from bot.core.alerts import parse_notification
        from bot.core.alerts import simulate as alert_sim

        usage = "usage: sim alert fire NAME [--severity S] [--env E] | sim alert resolve NAME"
        if len(words) < 2 or words[0] not in ("fire", "resolve") or words[1].startswith("--"):
            raise LineFailed(f"sim alert: {usage}")
        action, name, options = words[0], words[1], dict(zip(words[2::2], words[3::2], strict=False))
        if len(words[2:]) % 2 or set(options) - {"--severity", "--env"} or (action == "resolve" and options):
            raise LineFailed(f"sim alert: {usage}")
        fired = self.fired_alerts.get(name)
        if action == "resolve" and fired is None:
            raise LineFailed(f"sim alert: {name} is not firing (fire it first)")
        severity, env, started = fired if fired else (
            options.get("--severity", "high"), options.get("--env") or self.c.config.default_environment,
            datetime.now(UTC))
        one = alert_sim.alert(name, status="firing" if action == "fire" else "resolved", severity=severity, env=env,
                              starts_at=started)
        body = json.dumps(alert_sim.notification([one], external_url="http://alertmanager.local:9093")).encode()
        result = self.c.core.alerts.accept(parse_notification(body))
        if action == "fire":
            self.fired_alerts[name] = (severity, env, started)
        else:
            del self.fired_alerts[name]
        self.say(f"(Alertmanager: {name} {'fired' if action == 'fire' else 'resolved'}; group {result.group_id} "
                 f"{result.status} in #{result.channel})")

    def _sim(self, all_words: list[str]) -> None:
        """Steer the simulated backends (see SIM_HELP); every value is checked before anything changes."""
        if not all_words:
            raise LineFailed("sim: what should change?\n" + SIM_HELP)
        env_name, words = self._sim_env(all_words)
        env = self.c.config.environments[env_name]
        world = self.c.sims[env_name]
        if not words:
            raise LineFailed(f"sim: what should change in {env_name}?\n" + SIM_HELP)
        what, args = words[0], words[1:]
        if (what in self.SIM_KNOBS or what in ("nodata", "prometheus")) and env.prometheus is not None:
            raise LineFailed(f"sim: {env_name} queries a real Prometheus; only simulated backends can be steered")
        if what in ("fail-rollout", "fail-job") and env.kubernetes is not None:
            raise LineFailed(f"sim: {env_name} uses a real Kubernetes cluster; only simulated backends can be "
                             "steered")
        if what == "trading" and env.trading_api is not None:
            raise LineFailed(f"sim: {env_name} uses a real trading API; only simulated backends can be steered")
        if what not in (*self.SIM_KNOBS, "nodata", "prometheus", "fail-rollout", "fail-job", "trading"):
            raise LineFailed(f"sim: unknown setting {what!r}\n" + SIM_HELP)
        expected_args = 0 if what == "fail-rollout" else 1
        if len(args) < expected_args:
            raise LineFailed(f"sim {what}: needs a value\n" + SIM_HELP)
        if len(args) > expected_args:
            extra = args[expected_args:]
            if len(extra) == 1:  # `sim error-rate 0.2 prod`: most likely a misspelt environment
                raise LineFailed(f"sim {what}: unknown environment {extra[0]!r} "
                                 f"(environments: {', '.join(self.c.sims)})")
            raise LineFailed(f"sim {what}: unexpected {' '.join(extra)!r}\n" + SIM_HELP)
        if what in self.SIM_KNOBS:
            knob = self.SIM_KNOBS[what]
            if knob.kind == "ratio":
                value = self._ratio(knob, args[0])
                shown = f"{knob.meaning} {value:g} ({value * 100:g} %)"
            else:
                value = self._milliseconds(knob, args[0])
                shown = f"{knob.meaning} {value:g} ms"
            world.metrics.set(knob.metric, value)
        elif what == "nodata":
            on = self._switch_word(args[0], "on", "off", "nodata")
            world.metrics.set("nodata", on)
            shown = "Prometheus answers with no data" if on else "Prometheus answers with data again"
        elif what == "prometheus":
            down = self._switch_word(args[0], "down", "up", "prometheus")
            world.metrics.set("down", down)
            shown = "Prometheus is down" if down else "Prometheus is up"
        elif what == "fail-rollout":
            world.cluster.fail_next_rollout()
            shown = "the next rollout will stall"
        elif what == "trading":
            modes = ("ok", "slow", "hang", "fail", "lie")
            if args[0] not in modes:
                raise LineFailed(f"sim trading: one of {', '.join(modes)}, not {args[0]!r}")
            world.trading.set_mode(args[0])
            shown = {"ok": "the trading API behaves", "slow": "the trading API answers slowly",
                     "hang": "the trading API hangs", "fail": "the trading API answers 503",
                     "lie": "the trading API says it stopped but keeps trading"}[args[0]]
        else:
            jobs = [job.name for job in env.jobs]
            if jobs and args[0] not in jobs:
                raise LineFailed(f"sim fail-job: {env_name} has no job {args[0]!r} (jobs: {', '.join(jobs)})")
            world.cluster.fail_jobs(args[0], "simulated failure: migration 0042 could not lock table orders")
            shown = f"jobs named {args[0]} will fail"
        self.say(f"(simulated {env_name}: {shown})")

    # --- runs: what `wait` waits for and which buttons `click` may wait for -------------------------
    def active_runs(self) -> list[RunView]:
        views: list[RunView] = []
        with self.c.db.read() as session:
            runs = session.execute(select(Run).where(Run.state.in_([s.value for s in ACTIVE]))
                                   .order_by(Run.created_at)).scalars().all()
            for run in runs:
                steps = session.execute(select(RunStep).where(RunStep.run_id == run.id)
                                        .order_by(RunStep.phase, RunStep.idx)).scalars().all()
                views.append(self._view(run, list(steps)))
        return views

    @staticmethod
    def _view(run: Run, steps: list[RunStep]) -> RunView:
        current = next((s for s in steps if s.status == "running"), None)
        coming: set[str] = set()
        waiting_for = None
        if run.state == RunState.pending_approval.value:
            waiting_for = (f"approval ({plural(run.approvals_required, 'approval')} required; "
                           "an approver can `click Approve`)")
        else:
            coming.add("abort")
            for step in steps:
                if step.kind == "checklist" and step.status in ("pending", "running") \
                        and not (step.data or {}).get("ticked_by"):
                    coming.add(f"Tick: {step.name}"[:75].lower())
            if current is not None and current.kind == "checklist" \
                    and not (current.data or {}).get("ticked_by"):
                waiting_for = f"a tick (`click Tick: {current.name}`)"
        return RunView(run.id, run.state, current.name if current else None, waiting_for, frozenset(coming))

    def _run_exists(self, run_id: str) -> str | None:
        with self.c.db.read() as session:
            return session.execute(select(Run.state).where(Run.id == run_id)).scalar_one_or_none()

    def _wait(self, words: list[str]) -> None:
        """`wait [RUN] [SECONDS]`: until the bot has nothing left to do without a person (bounded)."""
        run_id, limit = None, self.DEFAULT_WAIT
        for word in words:
            if word.startswith("r-"):
                run_id = word
                continue
            try:
                limit = float(word.removesuffix("s"))
            except ValueError:
                limit = math.nan
            if not 0 < limit <= self.MAX_WAIT:
                raise LineFailed(f"wait: {word!r} is not a run id (r-…) nor a number of seconds from 1 to "
                                 f"{self.MAX_WAIT:.0f} (`wait [RUN] [SECONDS]`)")
        if run_id is not None and self._run_exists(run_id) is None:
            active = ", ".join(v.id for v in self.active_runs()) or "none"
            raise LineFailed(f"wait: no run {run_id} (active runs: {active})")
        self.wait_for_runs(limit, run_id, report=True)

    def wait_for_runs(self, limit: float, run_id: str | None = None, *, report: bool = False) -> bool:
        """Until every active run (or `run_id`) is finished or waits for a person; False on timeout."""
        deadline = time.monotonic() + limit
        while True:
            self.settle()
            views = [v for v in self.active_runs() if run_id is None or v.id == run_id]
            working = [v for v in views if v.waiting_for is None]
            if not working and self.settle():
                if report:
                    if run_id is None and not views:
                        self.say("(wait: done — no deploy run is active)")
                    for view in views:
                        self.say(f"(wait: run {view.id} waits for {view.waiting_for})")
                    if run_id is not None and not views:
                        self.say(f"(wait: run {run_id} has finished: {self._run_exists(run_id)})")
                return True
            if time.monotonic() >= deadline:
                if report:
                    busy = "; ".join(f"run {v.id} {v.state}" + (f" at “{v.step}”" if v.step else "")
                                     for v in working)
                    self.say(f"(wait: gave up after {limit:g}s; still working: {busy}; `wait` again to go on)")
                return False
            time.sleep(0.1)

    def _switch(self, who: str) -> None:
        who = who.lstrip("@")
        if who not in self.c.config.people:
            raise LineFailed(f"no person {who!r} in the config (people: {', '.join(self.c.config.people)})")
        self.actor_name = who
        self.say(f"(now acting as {who}, {self.c.config.people[who]})")

    def _click(self, label: str) -> None:
        if not label:
            raise LineFailed("click: which button? " + self._buttons_now())
        found = self.t.find_button(label)
        # a button a run is about to show (its checklist item's Tick, its Abort) may still be on its way:
        # wait for that one, bounded; any other label is answered at once
        deadline = time.monotonic() + self.settle_seconds
        while found is None and time.monotonic() < deadline and self._coming(label):
            time.sleep(0.05)
            found = self.t.find_button(label)
        if found is None:
            raise LineFailed(f"no button labelled {label!r} on any message ({self._buttons_now()})")
        msg, button = found
        n = next(self._n)
        inv = ActionInvocation(action_id=str(button.get("action_id")), value=str(button.get("value", "")),
                               actor=self.actor, channel_id=msg.channel, message_ts=msg.ts,
                               idempotency_key=f"console-click:{id(self)}:{n}",
                               response_url=msg.response_url or f"{RESPONSE_PREFIX}{n}", source="console")
        prepared = self.c.dispatcher.prepare_action(inv)
        self.c.dispatcher.launch(prepared, self.c.tasks)

    def _coming(self, label: str) -> bool:
        wanted = label.strip().lower()
        return any(wanted in view.coming_buttons for view in self.active_runs())

    def _buttons_now(self) -> str:
        labels = self.t.button_labels()
        return ("buttons now: " + ", ".join(labels)) if labels else "there are no buttons yet"

    def run_script(self, lines: Iterable[str]) -> int:
        previous_comment = False
        for number, raw in enumerate(lines, 1):
            line = raw.rstrip("\n")
            is_comment = line.lstrip().startswith("#")
            if line.strip() and not is_comment:
                self.say(f"\n{self.actor_name}> {line.strip()}")
            elif line.strip():
                self.say(("" if previous_comment else "\n") + line.strip())
            previous_comment = is_comment
            try:
                self.run_line(line)
                self.settle()
            except LineFailed as exc:
                self.settle()
                self.say(f"error: line {number}: {exc}")
                return 1
        if not self.wait_for_runs(self.run_settle_seconds):
            self.say("(background work still running when the wait ended)")
        return 0

    def interactive(self, stdin: TextIO) -> int:
        self.say(f"swarm-chatops console — acting as {self.actor_name}. Type `help` for the console's lines, "
                 "/help for the bot's commands, `quit` to leave.")
        while True:
            self.t.set_prompt(f"{self.actor_name}> ")
            line = stdin.readline()
            self.t.set_prompt(None)
            if not line or line.strip() in ("quit", "exit"):
                self.say("")
                return 0
            try:
                self.run_line(line)
            except LineFailed as exc:
                self.say(f"error: {exc}")
            self.settle()


def simulate_silences(container: Container) -> list[str]:
    """Environments without `alertmanager` silence in memory in the console, so the alert root's Silence
    buttons can be tried (the `silences` dict is the one the alert actions read)."""
    from integrations.alertmanager import SimulatedAlertmanager

    silences = getattr(container.core, "silences", None)
    if silences is None:
        return []
    missing = [name for name in container.config.environments if name not in silences]
    for name in missing:
        silences[name] = SimulatedAlertmanager()
    return [SimulatedAlertmanager.label] if missing else []


def banner(container: Container, out: TextIO, extra: list[str] | None = None) -> None:
    sims = sorted({label for label in container.core.backends.values() if label.startswith("simulated")}
                  | set(extra or []))
    out.write("swarm-chatops console: database " + container.settings.database_url.split("?")[0] + "\n")
    if sims:
        out.write("backends: SIMULATED — " + "; ".join(sims) + " (nothing real is changed)\n")


def run_console(settings: Settings, *, script: list[str] | None, stdin: TextIO = sys.stdin,
                out: TextIO = sys.stdout, settle_seconds: float = 10.0) -> int:
    from bot.config import load_config

    config = load_config(settings.config)
    names = {uid: name for name, uid in config.people.items()}
    transport = ConsoleTransport(out, names)
    container = build(settings, transport=transport, config=config)
    container.db.upgrade()
    container.start()
    console = Console(container, transport, out, settle_seconds=settle_seconds)
    banner(container, out, simulate_silences(container))
    try:
        if script is not None:
            return console.run_script(script)
        return console.interactive(stdin)
    finally:
        container.stop()


__all__ = ["Console", "ConsoleTransport", "changed_lines", "plural", "run_console"]
