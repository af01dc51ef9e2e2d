"""Severity routing (runbook 7.4) and its configuration: per environment, by label matchers."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from bot.config import parse_config
from bot.core.alerts.routing import route
from bot.errors import ConfigError
from tests.conftest import EXAMPLE_CONFIG


def _config(**extra: Any) -> Any:
    data = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    data["alerts"] = {"channel": "C0ALERTS01"}
    for path, value in extra.items():
        node = data
        *parents, last = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return parse_config(data)


def test_default_routes_follow_the_runbook() -> None:
    """critical → incident + @here, high → incident quietly, anything else → alerts channel."""
    config = _config()
    assert route(config, {"env": "production", "severity": "critical"}) == \
        route(config, {"env": "production", "severity": "page"})
    critical = route(config, {"env": "production", "severity": "critical"})
    assert (critical.channel, critical.mention, critical.severity) == ("C0PRODINC1", "here", "critical")
    assert route(config, {"env": "staging", "severity": "error"}).channel == "C0STAGEINC"
    other = route(config, {"env": "staging", "severity": "whatever"})
    assert (other.channel, other.mention, other.severity) == ("C0ALERTS01", "none", "medium")


def test_label_matchers_and_environment_overrides() -> None:
    """An environment's matcher wins over the severity; its severities override the defaults."""
    config = _config(**{
        "environments.production.alerts": {
            "routes": [{"match": {"team": "exchange"}, "match_re": {"alertname": "Exchange.*"},
                        "severity": "critical", "channel": "C0EXCHANGE"}],
            "severities": {"high": {"channel": "incident", "mention": "channel"}}},
        "environments.staging.channels.alerts": "C0STGALRT1"})
    hit = route(config, {"env": "production", "team": "exchange", "alertname": "ExchangeDown", "severity": "info"})
    assert (hit.channel, hit.severity, hit.mention) == ("C0EXCHANGE", "critical", "here")
    assert route(config, {"env": "production", "team": "exchange", "alertname": "Other"}).channel == "C0ALERTS01"
    assert route(config, {"env": "production", "severity": "high"}).mention == "channel"
    assert route(config, {"env": "staging", "severity": "info"}).channel == "C0STGALRT1"


def test_bad_route_config_is_reported_with_its_path() -> None:
    """A route with a bad regex or a channel that is not an id is a config error naming the field."""
    with pytest.raises(ConfigError) as err:
        _config(**{"alerts.routes": [{"match_re": {"alertname": "("}, "channel": "#general"}]})
    text = "\n".join(err.value.problems)
    assert "alerts.routes.0.channel" in text and "alerts.routes.0.match_re" in text
