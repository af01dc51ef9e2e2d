"""What a command handler may use: the ports and policies, built once by the composition root."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bot.config import Config
from bot.core.model import Reply
from bot.core.rbac import Authorizer
from bot.outbox import Outbox
from bot.persistence.db import Database


@dataclass
class Core:
    """The ports and policies a handler may use; built once by the composition root."""

    config: Config
    authorizer: Authorizer
    db: Database
    outbox: Outbox
    backends: dict[str, str] = field(default_factory=dict)  # what is real and what is simulated
    #: last resort when the database itself is down: tell the user directly, bypassing the outbox
    direct_reply: Callable[[str | None, str | None, str, Reply], None] | None = None
    deploy: Any = None  # bot.core.workflows.deploy.service.DeployService, wired by the container
    runs: Any = None  # bot.core.runs.store.RunStore
    executor: Any = None  # bot.core.runs.engine.Executor (continue_rollback)
    stop_trading: Any = None  # bot.core.workflows.trading.stop.StopTradingService
    resume_trading: Any = None  # bot.core.workflows.trading.resume.ResumeTradingService
    #: one environment's backends (bot.core.ports.EnvBackends), for live reads such as /status
    env_backends: Callable[[str], Any] | None = None
    #: environment -> its Alertmanager silences API (integrations.alertmanager.AlertmanagerClient), where configured
    silences: dict[str, Any] = field(default_factory=dict)
    alerts: Any = None  # bot.core.alerts.AlertIntake: alert groups, their hooks and root actions
    alert_actions: Any = None  # bot.core.alerts.actions.AlertActions: the root's buttons, paging, correlation
