"""The composition root: the one place that decides which implementation serves each port."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from bot.config import Config, load_config
from bot.core.dispatch import Core, Dispatcher
from bot.core.model import Reply
from bot.core.rbac import Authorizer, GroupDirectory
from bot.metrics import Metrics
from bot.outbox import Outbox, OutboxWorker, Transport
from bot.persistence.db import Database
from bot.settings import Settings
from bot.tasks import TaskRunner
from commands import registry

log = logging.getLogger(__name__)


@dataclass
class Container:
    settings: Settings
    config: Config
    db: Database
    metrics: Metrics
    outbox: Outbox
    core: Core
    dispatcher: Dispatcher
    tasks: TaskRunner
    worker: OutboxWorker
    threads: list[threading.Thread] = field(default_factory=list)
    stoppers: list[object] = field(default_factory=list)

    def start(self) -> None:
        self.worker.start()
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        """Graceful: finish in-flight tasks (bounded), flush the outbox, then close."""
        self.tasks.shutdown(self.settings.shutdown_grace_seconds)
        self.worker.stop(flush_seconds=min(5.0, self.settings.shutdown_grace_seconds))
        for stopper in self.stoppers:
            getattr(stopper, "stop", lambda: None)()
        self.db.dispose()


def subteams_in(config: Config) -> list[str]:
    found: set[str] = set()
    grants = list(config.roles.values()) + [m for env in config.environments.values() for m in env.roles.values()]
    for members in grants:
        found |= {m[8:] for m in members if m.startswith("subteam:")}
    return sorted(found)


def _direct_reply(transport: Transport) -> Callable[[str | None, str | None, str, Reply], None]:
    def send(response_url: str | None, channel: str | None, user_id: str, reply: Reply) -> None:
        try:
            if response_url:
                payload = {**reply.as_payload(), "response_url": response_url, "response_type": "ephemeral"}
                transport.deliver("respond", channel, payload)
            elif channel:
                transport.deliver("ephemeral", channel, {**reply.as_payload(), "user": user_id})
        except Exception as exc:  # the last resort failed too; the log is all that is left
            log.error("could not tell %s that the database is down: %s", user_id, exc)

    return send


def build(settings: Settings, *, transport: Transport | None = None, config: Config | None = None,
          groups: GroupDirectory | None = None) -> Container:
    """Wire everything. `transport` None: the Slack Web API (needs CHATOPS_SLACK_BOT_TOKEN)."""
    config = config or load_config(settings.config)
    db = Database(settings.database_url)
    metrics = Metrics()
    outbox = Outbox()
    threads: list[threading.Thread] = []
    stoppers: list[object] = []
    if transport is None:
        from integrations.slack_web import SlackGroupDirectory, SlackWebTransport

        token = settings.secret("slack_bot_token")
        if not token:
            from bot.errors import ConfigError

            raise ConfigError(["CHATOPS_SLACK_BOT_TOKEN: required to talk to Slack"], source="settings")
        web = SlackWebTransport(token, settings.slack_api_url,
                                response_url_prefixes=settings.slack_response_url_prefixes)
        transport = web
        subteams = subteams_in(config)
        if groups is None and subteams:
            directory = SlackGroupDirectory(web.client, subteams)
            groups = directory
            threads.append(threading.Thread(target=directory.run, name="chatops-usergroups", daemon=True))
            stoppers.append(directory)
    authorizer = Authorizer(config, groups) if groups else Authorizer(config)
    backends = {}
    for name, env in config.environments.items():
        backends[f"{name}.kubernetes"] = "configured" if env.kubernetes else "simulated (no cluster configured)"
        backends[f"{name}.prometheus"] = "configured" if env.prometheus else "simulated (no Prometheus configured)"
        backends[f"{name}.trading_api"] = "configured" if env.trading_api else "simulated (no trading API configured)"
    core = Core(config=config, authorizer=authorizer, db=db, outbox=outbox, backends=backends,
                direct_reply=_direct_reply(transport))
    commands, actions = registry.build()
    dispatcher = Dispatcher(core, commands, actions, metrics)
    tasks = TaskRunner(metrics, workers=settings.worker_threads)
    worker = OutboxWorker(db, transport, metrics, max_attempts=settings.outbox_max_attempts)
    outbox.subscribe(worker.wakeup)
    return Container(settings, config, db, metrics, outbox, core, dispatcher, tasks, worker, threads, stoppers)
