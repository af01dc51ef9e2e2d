"""`chatops console`: the same commands and buttons as Slack, in a terminal, on embedded defaults.

Lines: a slash command as typed in Slack; `as <user>` switches the acting person; `click <label>`
presses a button on the latest message that has it; `#` starts a comment. Messages the bot
posts, updates or shows ephemerally are rendered as text. With `--script FILE` every line is
echoed and run; the run stops with exit code 1 at a line that fails (unknown command, no such
button, unknown person) after the bot's background work has settled.
"""

from __future__ import annotations

import itertools
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TextIO

from bot.container import Container, build
from bot.core.model import ActionInvocation, Actor, Invocation
from bot.errors import UnknownCommand
from bot.outbox import Delivered, PermanentError
from bot.render import buttons_of, render
from bot.settings import Settings

RESPONSE_PREFIX = "console://respond/"


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
    """Delivers outbox calls to the terminal instead of Slack (and remembers them for `click`)."""

    def __init__(self, out: TextIO, names: dict[str, str]) -> None:
        self.out = out
        self.names = names
        self.messages: list[ShownMessage] = []
        self._by_ts: dict[str, ShownMessage] = {}
        self._ts = itertools.count(1)
        self._lock = threading.Lock()

    def _new_ts(self) -> str:
        return f"{int(time.time())}.{next(self._ts):06d}"

    def print(self, header: str, text: str, blocks: list[dict[str, Any]] | None) -> None:
        with self._lock:
            self.out.write(f"{header}\n{render(text, blocks, self.names.get)}\n")
            self.out.flush()

    def show(self, msg: ShownMessage, header: str) -> None:
        with self._lock:
            self.messages.append(msg)
            self._by_ts[msg.ts] = msg
        self.print(header, msg.text, msg.blocks)

    def deliver(self, kind: str, channel: str | None, payload: dict[str, Any]) -> Delivered:
        text, blocks = str(payload.get("text", "")), payload.get("blocks")
        if kind == "post":
            ts = self._new_ts()
            where = f"#{channel}" + (" (thread)" if payload.get("thread_ts") else "")
            self.show(ShownMessage(channel, ts, text, blocks), f"[{where}] bot posted:")
            return Delivered(channel, ts)
        if kind == "update":
            with self._lock:
                msg = self._by_ts.get(payload["ts"])
            if msg is None:
                raise PermanentError("message_not_found")
            before = render(msg.text, msg.blocks, self.names.get).splitlines()
            msg.text, msg.blocks = text, blocks
            with self._lock:  # the updated message is now the latest one with its buttons
                self.messages.remove(msg)
                self.messages.append(msg)
            after = render(text, blocks, self.names.get).splitlines()
            changed = [line for line in after if line not in before]
            header = f"[#{channel}] bot updated its message ({len(changed)} changed line(s); `show` prints it whole):"
            with self._lock:
                self.out.write(header + "\n" + "".join(line + "\n" for line in changed))
                self.out.flush()
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
        raise PermanentError(f"unknown kind {kind}")

    def latest(self) -> ShownMessage | None:
        with self._lock:
            return self.messages[-1] if self.messages else None

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


class Console:
    def __init__(self, container: Container, transport: ConsoleTransport, out: TextIO, *,
                 settle_seconds: float = 10.0) -> None:
        self.c = container
        self.t = transport
        self.out = out
        self.settle_seconds = settle_seconds
        self.run_settle_seconds = 300.0
        self.actor_name = next(iter(container.config.people))
        self._n = itertools.count(1)

    @property
    def actor(self) -> Actor:
        return Actor(self.c.config.people[self.actor_name], self.actor_name)

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

    def run_line(self, line: str) -> None:
        line = line.strip()
        if not line or line.startswith("#"):
            return
        if line.startswith("/"):
            self._command(line)
        elif line.split()[0] == "as":
            self._switch(line[2:].strip())
        elif line.split()[0] == "click":
            self._click(line[5:].strip())
        elif line.split()[0] == "sim":
            self._sim(line.split()[1:])
        elif line.split()[0] == "wait":
            self._wait(line.split()[1:])
        elif line == "show":
            msg = self.t.latest()
            if msg is None:
                raise LineFailed("no message to show yet")
            self.t.print(f"[#{msg.channel}] latest message:", msg.text, msg.blocks)
        elif line in ("help", "?"):
            self.out.write("Type a slash command (/help), `as <person>`, `click <button label>`, "
                           "`sim error-rate 0.2` (simulated backends), `wait`, or `quit`.\n")
        else:
            raise LineFailed(f"not a command: {line!r} (type /help, `as <person>` or `click <label>`)")

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

    SIM_KNOBS = {"error-rate": "error_rate", "latency-ms": "p95_latency_ms", "order-success": "order_success"}

    def _sim(self, words: list[str]) -> None:
        """`sim error-rate 0.2 [ENV]`, `sim latency-ms 1500`, `sim order-success 0.9`, `sim nodata on|off`,
        `sim prometheus down|up`, `sim fail-rollout`, `sim fail-job NAME`, `sim trading ok|fail|hang|lie`:
        steer the simulated backends."""
        env = words[-1] if words and words[-1] in self.c.sims else self.c.config.resolve_env(None)
        env_name = env if isinstance(env, str) else (env[0] if env else next(iter(self.c.sims)))
        world = self.c.sims[env_name]
        words = [w for w in words if w != env_name]
        try:
            if len(words) == 2 and words[0] in self.SIM_KNOBS:
                world.metrics.set(self.SIM_KNOBS[words[0]], float(words[1]))
            elif words[:1] == ["nodata"] and len(words) == 2:
                world.metrics.set("nodata", words[1] == "on")
            elif words[:1] == ["prometheus"] and len(words) == 2:
                world.metrics.set("down", words[1] == "down")
            elif words == ["fail-rollout"]:
                world.cluster.fail_next_rollout()
            elif words[:1] == ["trading"] and len(words) == 2:
                world.trading.set_mode(words[1])
            elif words[:1] == ["fail-job"] and len(words) == 2:
                world.cluster.fail_jobs(words[1], "simulated failure: migration 0042 could not lock table orders")
            else:
                raise LineFailed("sim: use error-rate X | latency-ms X | order-success X | nodata on|off | "
                                 "prometheus down|up | fail-rollout | fail-job NAME | trading ok|fail|hang|lie "
                                 "[ENV]")
        except ValueError as exc:
            raise LineFailed(f"sim: {exc}") from None
        self.out.write(f"(simulated {env_name}: {' '.join(words)})\n")

    def _wait(self, words: list[str]) -> None:
        """`wait` or `wait 60`: until no deploy run is in progress (bounded)."""
        try:
            limit = float(words[0]) if words else 120.0
        except ValueError:
            raise LineFailed("wait: give a number of seconds") from None
        if not self.settle_runs(limit):
            self.out.write(f"(still running after {limit:g}s)\n")

    def settle_runs(self, limit: float) -> bool:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            self.settle()
            if not self.c.executor.busy() and self.settle():
                return True
            time.sleep(0.1)
        return False

    def _switch(self, who: str) -> None:
        who = who.lstrip("@")
        if who not in self.c.config.people:
            raise LineFailed(f"no person {who!r} in the config (people: {', '.join(self.c.config.people)})")
        self.actor_name = who
        self.out.write(f"(now acting as {who}, {self.c.config.people[who]})\n")

    def _click(self, label: str) -> None:
        # a button may still be on its way (a run reaching a checklist item): wait for it, bounded
        deadline = time.monotonic() + self.settle_seconds
        found = self.t.find_button(label)
        while found is None and time.monotonic() < deadline and self.c.executor.busy():
            time.sleep(0.1)
            found = self.t.find_button(label)
        if found is None:
            raise LineFailed(f"no button labelled {label!r} on any message")
        msg, button = found
        n = next(self._n)
        inv = ActionInvocation(action_id=str(button.get("action_id")), value=str(button.get("value", "")),
                               actor=self.actor, channel_id=msg.channel, message_ts=msg.ts,
                               idempotency_key=f"console-click:{id(self)}:{n}",
                               response_url=msg.response_url or f"{RESPONSE_PREFIX}{n}", source="console")
        prepared = self.c.dispatcher.prepare_action(inv)
        self.c.dispatcher.launch(prepared, self.c.tasks)

    def run_script(self, lines: Iterable[str]) -> int:
        previous_comment = False
        for number, raw in enumerate(lines, 1):
            line = raw.rstrip("\n")
            is_comment = line.lstrip().startswith("#")
            if line.strip() and not is_comment:
                self.out.write(f"\n{self.actor_name}> {line.strip()}\n")
            elif line.strip():
                self.out.write(("" if previous_comment else "\n") + f"{line.strip()}\n")
            previous_comment = is_comment
            try:
                self.run_line(line)
                self.settle()
            except LineFailed as exc:
                self.settle()
                self.out.write(f"error: line {number}: {exc}\n")
                return 1
        if not self.settle_runs(self.run_settle_seconds):
            self.out.write("(background work still running when the wait ended)\n")
        return 0

    def interactive(self, stdin: TextIO) -> int:
        self.out.write(f"swarm-chatops console — acting as {self.actor_name}. Type /help, `as <person>`, "
                       "`click <label>`, or quit.\n")
        while True:
            self.out.write(f"{self.actor_name}> ")
            self.out.flush()
            line = stdin.readline()
            if not line or line.strip() in ("quit", "exit"):
                self.out.write("\n")
                return 0
            try:
                self.run_line(line)
            except LineFailed as exc:
                self.out.write(f"error: {exc}\n")
            self.settle()


def banner(container: Container, out: TextIO) -> None:
    sims = sorted({label for label in container.core.backends.values() if label.startswith("simulated")})
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
    banner(container, out)
    try:
        if script is not None:
            return console.run_script(script)
        return console.interactive(stdin)
    finally:
        container.stop()


__all__ = ["Console", "ConsoleTransport", "run_console"]
