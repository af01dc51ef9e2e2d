"""Shared harness for the tests/test_deploy_*.py files (no tests of its own).

A fast test config derived from chatops.example.yml (5 s canary intervals, two canary steps, no
monitoring window, no jobs), the real bot under uvicorn talking to a FakeSlack, and a `Deployer`
that drives it the way people do: slash commands, button clicks taken from the message the fake
Slack received, and waits on conditions (run state, Slack calls), never fixed sleeps.
"""

from __future__ import annotations

import itertools
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import select

from bot.container import Container
from bot.core.ports import WorkloadRef
from bot.core.runs.store import run_key
from bot.ids import decode_value
from bot.persistence import audit as audit_log
from bot.persistence.models import Approval, AuditRecord, Run, RunStep, SlackMessage
from tests.bot_server import RunningBot, start_bot
from tests.harness.signing import block_actions_body
from tests.harness.slack_api import FakeSlack

REPO = Path(__file__).resolve().parents[1]
ALICE, BOB, CAROL = "U0ALICE01", "U0BOB0002", "U0CAROL03"
DAVE, ERIN, ROOT = "U0DAVE004", "U0ERIN005", "U0ROOT006"
NAMES = {ALICE: "alice", BOB: "bob", CAROL: "carol", DAVE: "dave", ERIN: "erin", ROOT: "root"}
PROD_DEPLOY, PROD_INCIDENT = "C0PRODDEP1", "C0PRODINC1"
STAGING_DEPLOY, STAGING_INCIDENT = "C0STAGING1", "C0STAGEINC"
IMAGE = "registry.example.com/trading-bot-swarm"
OLD_IMAGE, NEW_IMAGE = f"{IMAGE}:v2.2.0", f"{IMAGE}:v2.3"
ROLLOUT_SECONDS = 0.3  # the simulated cluster's rollout time in these tests (the console's is 1 s)
FINISHED = ("succeeded", "rolled_back", "failed", "aborted", "expired")


# --- configuration ----------------------------------------------------------------------------------
def fast_config_data() -> dict[str, Any]:
    """chatops.example.yml with test timings: canary [50, 100] every 5 s, no monitoring, no jobs."""
    data: dict[str, Any] = yaml.safe_load((REPO / "chatops.example.yml").read_text())
    for env in data["environments"].values():
        env["canary"] = {**env.get("canary", {}), "steps": [50, 100], "interval_seconds": 5}
        env["monitor_seconds"] = 0
        env["blue_green"] = {"monitor_seconds": 0}
        env.pop("jobs", None)
    # the default procedure resumes trading over 2 minutes; the same steps with no pause between fractions
    data["environments"]["staging"]["procedure"] = [
        {"kind": "checklist", "name": "Stakeholders notified", "text": "Stakeholders notified"},
        {"kind": "precheck", "name": "Pre-checks"},
        {"kind": "trading_stop", "name": "Stop trading gracefully", "strategies": ["rolling", "blue-green"]},
        {"kind": "maintenance_on", "name": "Maintenance mode on", "strategies": ["rolling", "blue-green"]},
        {"kind": "rollout", "name": "Roll out"},
        {"kind": "health", "name": "Health checks and smoke tests"},
        {"kind": "maintenance_off", "name": "Maintenance mode off", "strategies": ["rolling", "blue-green"]},
        {"kind": "trading_resume", "name": "Resume trading gradually",
         "strategies": ["rolling", "blue-green"],
         "fractions": [0.25, 0.5, 1.0], "pause_seconds": 0},
    ]
    return data


JOBS = [{"name": name, "template": {"spec": {"backoffLimit": 0, "template": {"spec": {
    "restartPolicy": "Never", "containers": [{"name": name, "image": "{image}", "args": [name]}]}}}}}
    for name in ("backup", "migrate")]


def write_config(tmp_path: Path, change: Callable[[dict[str, Any]], None] | None = None) -> Path:
    """Write the fast test config (after `change` edits it) and return its path."""
    data = fast_config_data()
    if change is not None:
        change(data)
    path = tmp_path / "chatops.test.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def wait_until(condition: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll `condition` until it returns something truthy (and return that)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


# --- the bot ------------------------------------------------------------------------------------------
def fast_sims(container: Container) -> Container:
    for world in container.sims.values():
        world.cluster.rollout_seconds = ROLLOUT_SECONDS
    return container


def start_deploy_bot(fake: FakeSlack, database_url: str, config: Path,
                     prepare: Callable[[Container], Container] = fast_sims, **settings: Any) -> Deployer:
    """Start the real bot; `prepare` edits the container before its executor starts."""
    running = start_bot(fake, database_url, prepare=prepare, config=config, **settings)
    return Deployer(running)


def module_database_url(request: pytest.FixtureRequest, tmp: Path) -> str:
    """For a module-scoped fixture parametrized "sqlite"/"postgresql": an empty database of that kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp}/chatops.db"
    from tests.conftest import _fresh_postgres

    return _fresh_postgres(request.getfixturevalue("postgres_url"))


BOTH_DATABASES = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture
def fake_slack() -> Iterator[FakeSlack]:
    """A fake Slack Web API on a real socket that knows the example config's people."""
    with FakeSlack(users=dict(NAMES)) as fake:
        yield fake


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    """The fast test config file."""
    return write_config(tmp_path)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """An empty SQLite database file."""
    return f"sqlite:///{tmp_path}/chatops.db"


@pytest.fixture
def deployer(fake_slack: FakeSlack, sqlite_url: str, config_path: Path) -> Iterator[Deployer]:
    """The real bot (fast test config, SQLite, simulated backends) and helpers to drive it."""
    d = start_deploy_bot(fake_slack, sqlite_url, config_path)
    yield d
    d.stop()


# --- driving it ------------------------------------------------------------------------------------------
class Deployer:
    """Slash commands, button clicks and look-ups against one running bot."""

    _names = itertools.count(1)

    def __init__(self, bot: RunningBot) -> None:
        self.bot = bot
        self.fake = bot.fake
        self.container = bot.container
        self.stopped = False

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.bot.stop()

    def sim(self, env: str = "production") -> Any:
        return self.container.sims[env]

    def workload(self, env: str = "production") -> WorkloadRef:
        e = self.container.config.environments[env]
        return WorkloadRef(e.namespace, e.deployment, e.container)

    def live_image(self, env: str = "production") -> str:
        """The image the environment's (simulated) Deployment runs now."""
        return str(self.sim(env).cluster.current_image(self.workload(env)))

    # commands and replies
    def command(self, command: str, text: str, user: str = ALICE, *, channel: str = STAGING_DEPLOY) -> str:
        """Run a slash command and return the text its user sees (the ack or the response_url reply)."""
        name = f"r{next(self._names)}"
        resp = self.bot.command(command, text, user, name=name, channel=channel)
        assert resp.status_code == 200, resp.text
        if resp.content and resp.headers.get("content-type", "").startswith("application/json"):
            body = resp.json()
            if body.get("text"):
                return str(body["text"])
        return self.reply(name)

    def reply(self, name: str, timeout: float = 10.0) -> str:
        """The first reply at that response_url (a later one may replace it: "queued" -> "posted")."""
        posts = self.fake.wait_for_response(name, timeout=timeout)
        return str(posts[0].body.get("text", ""))

    def deploy(self, text: str, user: str = ALICE) -> tuple[str, str]:
        """Run /deploy and return (the requester's reply, the new run id)."""
        reply = self.command("/deploy", text, user)
        found = re.search(r"run `(r-[0-9a-f]+)`", reply)
        assert found, f"no run id in reply: {reply}"
        return reply, found.group(1)

    # the run's message and buttons
    def message_ts(self, run_id: str) -> str:
        def ts() -> str | None:
            with self.container.db.read() as session:
                row = session.get(SlackMessage, run_key(run_id))
                return row.ts if row else None
        return str(wait_until(ts, 10, f"the message of run {run_id}"))

    def message(self, run_id: str) -> dict[str, Any]:
        """The run's message as Slack shows it now (after queued updates are delivered)."""
        self.bot.settle()
        run = self.run(run_id)
        return self.fake.message(run.channel, self.message_ts(run_id))

    def message_text(self, run_id: str) -> str:
        return blocks_text(self.message(run_id))

    def buttons(self, run_id: str) -> list[dict[str, Any]]:
        return buttons_of(self.message(run_id))

    def button(self, run_id: str, label: str) -> dict[str, Any]:
        """The button whose text starts with `label`, waiting for it to appear."""
        def find() -> dict[str, Any] | None:
            return next((b for b in self.buttons(run_id) if b["text"]["text"].startswith(label)), None)
        return dict(wait_until(find, 20, f"button {label!r} on run {run_id}"))

    def click_body(self, run_id: str, label: str, user: str, name: str, *, value: str | None = None) -> bytes:
        button = self.button(run_id, label)
        return self.press_body(run_id, {**button, "value": value if value is not None else button["value"]},
                               user, name)

    def press_body(self, run_id: str, button: dict[str, Any], user: str, name: str) -> bytes:
        return block_actions_body(button["action_id"], button["value"], user, self.run(run_id).channel,
                                  self.message_ts(run_id), self.fake.response_url(name),
                                  block_id=f"run:{run_id}", user_name=NAMES.get(user, "someone"))

    def click(self, run_id: str, label: str, user: str, *, value: str | None = None) -> str:
        """Click a button of the run's message as `user`; return the reply that user sees."""
        name = f"c{next(self._names)}"
        resp = self.bot.post(self.click_body(run_id, label, user, name, value=value))
        assert resp.status_code == 200, resp.text
        return self.reply(name)

    def press(self, run_id: str, button: dict[str, Any], user: str) -> str:
        """Click `button` (perhaps from an earlier version of the message) as `user`; return the reply."""
        name = f"c{next(self._names)}"
        resp = self.bot.post(self.press_body(run_id, button, user, name))
        assert resp.status_code == 200, resp.text
        return self.reply(name)

    def click_together(self, run_id: str, label: str, users: list[str]) -> list[str]:
        """Several users click at the same moment (one thread each); their replies, in order."""
        bodies = [(f"c{next(self._names)}", u) for u in users]
        posts = [(name, self.click_body(run_id, label, u, name)) for name, u in bodies]
        barrier = threading.Barrier(len(posts))
        statuses: list[int] = []

        def send(body: bytes) -> None:
            barrier.wait()
            statuses.append(self.bot.post(body).status_code)

        threads = [threading.Thread(target=send, args=(body,)) for _, body in posts]
        for t in threads:
            t.start()
        for t in threads:
            t.join(15)
        assert statuses == [200] * len(posts)
        return [self.reply(name) for name, _ in posts]

    # the database
    def run(self, run_id: str) -> Run:
        with self.container.db.read() as session:
            run = session.get(Run, run_id)
            assert run is not None, run_id
            return run

    def steps(self, run_id: str, phase: str = "main") -> list[RunStep]:
        with self.container.db.read() as session:
            stmt = select(RunStep).where(RunStep.run_id == run_id, RunStep.phase == phase)
            return list(session.execute(stmt.order_by(RunStep.idx)).scalars())

    def step(self, run_id: str, kind: str) -> RunStep:
        return next(s for s in self.steps(run_id) if s.kind == kind)

    def approvals(self, run_id: str) -> list[Approval]:
        with self.container.db.read() as session:
            return list(session.execute(select(Approval).where(Approval.run_id == run_id)).scalars())

    def wait_state(self, run_id: str, *states: str, timeout: float = 40.0) -> Run:
        wanted = states or FINISHED
        wait_until(lambda: self.run(run_id).state in wanted, timeout, f"run {run_id} to reach {wanted}")
        run = self.run(run_id)
        self.bot.settle()
        return run

    def wait_step(self, run_id: str, kind: str, status: str = "running", timeout: float = 20.0) -> RunStep:
        wait_until(lambda: self.step(run_id, kind).status == status, timeout, f"step {kind} to be {status}")
        return self.step(run_id, kind)

    def audit(self, action: str = "", run_id: str | None = None) -> list[dict[str, Any]]:
        """Audit records (dicts, args decoded) with this action (a prefix when it ends in "." or is
        empty), oldest first, for one run if given."""
        def wanted(name: str) -> bool:
            return name.startswith(action) if action.endswith(".") or not action else name == action

        with self.container.db.read() as session:
            records = session.execute(select(AuditRecord).order_by(AuditRecord.seq)).scalars()
            rows = [audit_log.as_dict(r) for r in records if wanted(r.action)]
        return [r for r in rows if run_id is None or r["args"].get("run") == run_id]

    def verify_audit(self) -> audit_log.VerifyResult:
        with self.container.db.read() as session:
            return audit_log.verify(session)

    def thread_texts(self, run_id: str) -> list[str]:
        self.bot.settle()
        ts = self.message_ts(run_id)
        messages = self.fake.messages_in(self.run(run_id).channel)
        return [m.get("text", "") for m in messages if m.get("thread_ts") == ts]

    def channel_texts(self, channel: str) -> list[str]:
        self.bot.settle()
        return [m.get("text", "") for m in self.fake.messages_in(channel) if not m.get("thread_ts")]

    # the whole approval dance for production
    def approve_all(self, run_id: str) -> None:
        self.click(run_id, "Approve", BOB)
        self.click(run_id, "Approve", CAROL)

    def tick(self, run_id: str, user: str = ALICE) -> str:
        return self.click(run_id, "Tick:", user)


def blocks_text(message: dict[str, Any]) -> str:
    """Everything a person reads in a message: its blocks' texts, fields and button labels."""
    out: list[str] = [str(message.get("text", ""))]

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("text"), str):
                out.append(node["text"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(message.get("blocks") or [])
    return "\n".join(out)


def buttons_of(message: dict[str, Any]) -> list[dict[str, Any]]:
    actions = [b for b in message.get("blocks") or [] if b.get("type") == "actions"]
    return [e for b in actions for e in b.get("elements", []) if e.get("type") == "button"]


def button_payload(button: dict[str, Any]) -> dict[str, Any]:
    return decode_value(button["value"])

