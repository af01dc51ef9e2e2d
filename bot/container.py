"""The composition root: the one place that decides which implementation serves each port."""

from __future__ import annotations

import logging
import os
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from bot.config import CheckSettings, Config, load_config
from bot.core import deploy_dead
from bot.core.alerts import AlertIntake
from bot.core.context import Core
from bot.core.model import Reply
from bot.core.ports import EnvBackends
from bot.core.rbac import Authorizer, GroupDirectory
from bot.core.runs.engine import Executor
from bot.core.runs.store import RunStore
from bot.core.runs.workflow import Registry
from bot.core.workflows.deploy.service import DeployService
from bot.core.workflows.deploy.workflow import DeployWorkflow, RollbackWorkflow
from bot.core.workflows.trading.resume import ResumeTradingService, ResumeTradingWorkflow
from bot.core.workflows.trading.stop import StopTradingService, StopTradingWorkflow
from bot.metrics import Metrics
from bot.outbox import PAGE_KIND, Outbox, OutboxWorker, RetryPolicy, Transport
from bot.persistence.batch import BatchWriter
from bot.persistence.db import Database
from bot.settings import Settings
from bot.tasks import PendingRunner, TaskRunner
from commands import registry
from commands.dispatch import Dispatcher
from commands.home import HomeRefresher

if TYPE_CHECKING:
    from integrations.simulated import SimWorld

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
    executor: Executor
    sims: dict[str, SimWorld]
    writer: BatchWriter
    pending: PendingRunner
    threads: list[threading.Thread] = field(default_factory=list)
    stoppers: list[object] = field(default_factory=list)
    #: outbox workers for rows that are not Slack calls (PagerDuty events), each with its own transport
    side_workers: list[OutboxWorker] = field(default_factory=list)

    def start(self) -> None:
        self.writer.start()
        self.pending.start()
        self.worker.start()
        for side in self.side_workers:
            side.start()
        self.executor.start()
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        """Graceful: finish in-flight tasks (bounded), pause deploy runs at their next check (their
        state is in the database; the next process resumes them), flush the outbox, then close."""
        self.pending.stop()
        self.executor.stop(timeout=self.settings.shutdown_grace_seconds)
        # acknowledged deliveries first reach their job; a job not finished in time stays pending
        # (its row outlives us: the next process, or another replica, runs it)
        self.writer.stop(timeout=min(5.0, self.settings.shutdown_grace_seconds))
        self.tasks.shutdown(self.settings.shutdown_grace_seconds)
        self.worker.stop(flush_seconds=min(5.0, self.settings.shutdown_grace_seconds))
        for side in self.side_workers:
            side.stop(flush_seconds=min(2.0, self.settings.shutdown_grace_seconds))
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
    outbox = Outbox(default_retry=timedelta(minutes=settings.outbox_reply_retry_minutes),
                    alert_retry=timedelta(minutes=settings.outbox_alert_retry_minutes))
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
    backends: dict[str, str] = {}
    env_backends, sims = build_backends(config)
    for name, eb in env_backends.items():
        for kind, label in eb.labels.items():
            backends[f"{name}.{kind}"] = label
    workflows = Registry()
    deploy_workflow = DeployWorkflow(config, env_backends.__getitem__)
    workflows.add(deploy_workflow)
    rollback_workflow = RollbackWorkflow(config, env_backends.__getitem__)
    workflows.add(rollback_workflow)
    store = RunStore(config, outbox, env_backends.__getitem__, workflows)
    deploy_workflow.store = rollback_workflow.store = store
    workflows.add(StopTradingWorkflow(config, env_backends.__getitem__))
    resume_workflow = ResumeTradingWorkflow(config, env_backends.__getitem__)
    workflows.add(resume_workflow)
    deploy = DeployService(config, authorizer, store, default_check_settings)
    core = Core(config=config, authorizer=authorizer, db=db, outbox=outbox, backends=backends,
                direct_reply=_direct_reply(transport), deploy=deploy, env_backends=env_backends.__getitem__)
    commands, actions = registry.build()
    dispatcher = Dispatcher(core, commands, actions, metrics)
    home_refresher = HomeRefresher(core, commands)  # App Home follows run changes (issue 7 §6)
    store.on_state_change.append(home_refresher.notify)
    stoppers.append(home_refresher)
    tasks = TaskRunner(metrics, workers=settings.worker_threads)
    side_workers = _page_workers(config, db, metrics, outbox, settings)
    worker = OutboxWorker(db, transport, metrics, outbox=outbox, claim_seconds=settings.outbox_claim_seconds,
                          retry=RetryPolicy(cap_seconds=settings.outbox_retry_cap_seconds),
                          skip_kinds=frozenset({PAGE_KIND}) if side_workers else frozenset())
    outbox.subscribe(worker.wakeup)
    for side in side_workers:
        outbox.subscribe(side.wakeup)
    deploy_dead.install(outbox, deploy)
    executor = Executor(db, store, lease_seconds=settings.deploy_lease_seconds, metrics=metrics)
    core.runs = store
    core.stop_trading = StopTradingService(config, store)
    core.resume_trading = ResumeTradingService(config, store, default_check_settings)
    resume_workflow.store = store
    core.executor = executor
    core.silences = _silences(config)
    core.alerts = AlertIntake(config, db, outbox)
    from bot.core.alerts.actions import AlertActions
    from bot.core.incidents import IncidentService

    core.alert_actions = AlertActions(config, core.alerts, store, core.silences,
                                      incidents=IncidentService(config, outbox, core.authorizer)).install()
    owner = f"{os.uname().nodename}:{os.getpid()}:{secrets.token_hex(3)}"
    pending = PendingRunner(db, tasks, dispatcher.rebuild, owner=owner)
    writer = BatchWriter(db, owner=owner, lease_seconds=pending.lease_seconds)
    dispatcher.writer = writer
    dispatcher.runner = pending
    return Container(settings, config, db, metrics, outbox, core, dispatcher, tasks, worker, executor, sims,
                     writer, pending, threads, stoppers, side_workers)


def _page_workers(config: Config, db: Database, metrics: Metrics, outbox: Outbox,
                  settings: Settings) -> list[OutboxWorker]:
    """A worker for PagerDuty events when some environment pages (the routing keys are read when sent)."""
    targets = {name: env.pagerduty for name, env in config.environments.items() if env.pagerduty is not None}
    if not targets:
        return []
    from integrations.pagerduty import PagerDutyClient, PagerDutyTransport, routing_keys_from_env

    clients = {name: PagerDutyClient(t.url, timeout=t.timeout_seconds) for name, t in targets.items()}
    transport = PagerDutyTransport(next(iter(clients.values())),
                                   routing_keys_from_env({n: t.routing_key_env for n, t in targets.items()}),
                                   clients=clients)
    return [OutboxWorker(db, transport, metrics, outbox=outbox, kinds=frozenset({PAGE_KIND}),
                         claim_seconds=settings.outbox_claim_seconds,
                         retry=RetryPolicy(cap_seconds=settings.outbox_retry_cap_seconds))]


def _silences(config: Config) -> dict[str, Any]:
    """Per environment with `alertmanager` configured: the client the Silence buttons use."""
    from integrations.alertmanager import AlertmanagerClient

    out: dict[str, Any] = {}
    for name, env in config.environments.items():
        if env.alertmanager is not None:
            token = os.environ.get(env.alertmanager.token_env) if env.alertmanager.token_env else None
            out[name] = AlertmanagerClient(env.alertmanager.url, token=token,
                                           timeout=env.alertmanager.timeout_seconds)
    return out


def default_check_settings() -> list[CheckSettings]:
    from bot.core.analysis import DEFAULT_CHECKS

    return [CheckSettings(name=c.name, query=c.query, op=c.op, threshold=c.threshold, unit=c.unit)
            for c in DEFAULT_CHECKS]


def build_backends(config: Config) -> tuple[dict[str, EnvBackends], dict[str, SimWorld]]:
    """Real integrations where an environment configures them, labelled simulated ones elsewhere."""
    from integrations.simulated import sim_world_for

    sims = sim_world_for(config.environments)
    out: dict[str, EnvBackends] = {}
    for name, env in config.environments.items():
        sim = sims[name]
        labels = {}
        if env.kubernetes is not None:
            from integrations.kubernetes import cluster_from_target

            cluster: Any = cluster_from_target(env.kubernetes, timeout=env.kubernetes.timeout_seconds)
            labels["kubernetes"] = "configured"
        else:
            cluster, labels["kubernetes"] = sim.cluster, "simulated (no cluster configured)"
        if env.prometheus is not None:
            from integrations.prometheus import PrometheusMetrics

            metrics: Any = PrometheusMetrics(env.prometheus.url)
            labels["prometheus"] = f"configured ({env.prometheus.url})"
        else:
            metrics, labels["prometheus"] = sim.metrics, "simulated (no Prometheus configured)"
        if env.trading_api is not None:
            from integrations.trading_api import TradingApiClient

            key = os.environ.get(env.trading_api.api_key_env) if env.trading_api.api_key_env else None
            trading: Any = TradingApiClient(env.trading_api.base_url, key)
            labels["trading_api"] = f"configured ({env.trading_api.base_url})"
        else:
            trading, labels["trading_api"] = sim.trading, "simulated (no trading API configured)"
        if env.kubernetes is not None or env.trading_api is not None or env.prometheus is not None:
            # a real environment probes its real /health endpoints (only a wholly simulated one fakes them)
            from integrations.probes import HttpHealthProbe

            probe: Any = HttpHealthProbe()
        else:
            probe = sim.probe
        out[name] = EnvBackends(cluster, metrics, trading, probe, labels)
    return out, sims
