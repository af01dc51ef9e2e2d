"""Rollback messages read at 3 a.m. (issue 6 item 12): each fact once per place — the live message, its
thread, the incident channel; the live canary line shows the latest verdict; a finished run shows how long
it took, not its ETA; the incident alert links to the deploy message; image names are code spans."""

# ruff: noqa: F811  - fixtures imported from tests/test_deploy_support.py are test parameters here

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from bot.core.runs.effects import Change
from bot.core.workflows.deploy.messages import step_line
from bot.persistence.models import RunStep
from tests.harness.slack_api import FakeSlack
from tests.test_deploy_support import (  # noqa: F401  (fixtures)
    BOB,
    IMAGE,
    NAMES,
    PROD_DEPLOY,
    PROD_INCIDENT,
    Deployer,
    config_path,
    deployer,
    fake_slack,
    sqlite_url,
    start_deploy_bot,
    wait_until,
    write_config,
)

BARE_IMAGE = re.compile(r"(?<!`)" + re.escape(IMAGE))  # an image name outside a code span


def approved_canary(d: Deployer) -> str:
    _, run_id = d.deploy("v2.3 --env production --canary")
    d.approve_all(run_id)
    d.tick(run_id)
    return run_id


@pytest.fixture(scope="module")
def canary_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Deployer, str, str]]:
    """A production canary that succeeds; the message as it read while the canary was at 100 %, and its bot."""
    tmp = tmp_path_factory.mktemp("canary-messages")
    with FakeSlack(users=dict(NAMES)) as fake:
        d = start_deploy_bot(fake, f"sqlite:///{tmp}/chatops.db", write_config(tmp))
        run_id = approved_canary(d)
        wait_until(lambda: (d.step(run_id, "rollout").data or {}).get("weight") == 100, 40, "the canary at 100 %")
        at_100 = d.message_text(run_id)
        d.wait_state(run_id)
        yield d, run_id, at_100
        d.stop()


def test_live_canary_line_shows_the_latest_verdict(canary_run: tuple[Deployer, str, str]) -> None:
    """At 100 % the canary line shows the verdict the analysis reached (at 50 % or already at 100 %),
    not "starting"."""
    _, _, at_100 = canary_run
    assert "canary at *100%*" in at_100
    assert re.search(r"analysis: pass at (50|100)%", at_100), at_100
    assert "analysis: starting" not in at_100


def test_finished_run_shows_how_long_it_took_not_the_eta(canary_run: tuple[Deployer, str, str]) -> None:
    """While it runs the facts give the estimate; once finished only the real duration is shown, once."""
    d, run_id, at_100 = canary_run
    assert "*ETA*" in at_100
    final = d.message_text(run_id)
    assert "ETA" not in final, final
    assert re.search(r"took \d+s", final) and final.count("took") == 1, final


@pytest.fixture(scope="module")
def bad_canary(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Deployer, str]]:
    """A production canary whose error rate is 20 %: rolled back by its first analysis."""
    tmp = tmp_path_factory.mktemp("bad-canary-messages")
    with FakeSlack(users=dict(NAMES)) as fake:
        d = start_deploy_bot(fake, f"sqlite:///{tmp}/chatops.db", write_config(tmp))
        d.sim().metrics.set("error_rate", 0.2)
        run_id = approved_canary(d)
        d.wait_state(run_id)
        yield d, run_id
        d.stop()


def test_the_failed_verdict_is_said_once_in_the_message(bad_canary: tuple[Deployer, str]) -> None:
    """The live message names the failed check once (in *Why it rolled back*), not three times."""
    d, run_id = bad_canary
    text = d.message_text(run_id)
    assert d.run(run_id).state == "rolled_back"
    assert text.count("error_rate=0.2") == 1, text
    assert "Why it rolled back:" in text


def test_the_failed_verdict_is_said_once_in_the_thread(bad_canary: tuple[Deployer, str]) -> None:
    """The thread says the failed verdict once: with the start of the rollback."""
    d, run_id = bad_canary
    thread = d.thread_texts(run_id)
    assert len([t for t in thread if "error_rate=0.2" in t]) == 1, thread


def test_the_incident_channel_hears_the_cause_once_with_a_link(bad_canary: tuple[Deployer, str]) -> None:
    """The incident channel gets the cause once, and every alert links to the deploy message."""
    d, run_id = bad_canary
    alerts = [t for t in d.channel_texts(PROD_INCIDENT) if run_id in t]
    assert len(alerts) == 2, alerts  # rolling back, rolled back
    assert len([t for t in alerts if "error_rate=0.2" in t]) == 1, alerts
    link = f"https://slack.com/archives/{PROD_DEPLOY}/p{d.message_ts(run_id).replace('.', '')}"
    assert all(link in t for t in alerts), alerts


def test_image_names_are_code_spans(bad_canary: tuple[Deployer, str]) -> None:
    """Image names in the message, its thread and the incident alerts are in backticks (Slack would
    auto-link `registry.example.com/...`)."""
    d, run_id = bad_canary
    texts = [d.message_text(run_id), *d.thread_texts(run_id), *d.channel_texts(PROD_INCIDENT)]
    assert IMAGE in "\n".join(texts)
    assert [t for t in texts if BARE_IMAGE.search(t)] == []


def test_prometheus_down_is_one_cause_line(deployer: Deployer) -> None:
    """Prometheus down: the cause is said once in the message and once in the incident channel; the thread
    has one line per interval, none repeating the error per check."""
    deployer.sim().metrics.set("down", True)
    run_id = approved_canary(deployer)
    run = deployer.wait_state(run_id, timeout=60)
    assert run.state == "rolled_back"
    cause = "Prometheus unreachable for 4 intervals in a row → rolled back"
    assert deployer.message_text(run_id).count(cause) == 1
    assert len([t for t in deployer.channel_texts(PROD_INCIDENT) if cause in t]) == 1
    for line in deployer.thread_texts(run_id):
        assert line.lower().count("prometheus unreachable") <= 1, line


def test_an_abort_is_called_an_abort(deployer: Deployer) -> None:
    """An operator's Abort is reported as an abort, once in the message, never as a failure."""
    run_id = approved_canary(deployer)
    wait_until(lambda: (deployer.step(run_id, "rollout").data or {}).get("weight") == 50, 20, "50 %")
    deployer.click(run_id, "Abort", BOB)
    run = deployer.wait_state(run_id)
    assert run.state == "rolled_back"
    assert "failed" not in (run.rollback_reason or "") and "aborted by <@U0BOB0002>" in (run.rollback_reason or "")
    text = deployer.message_text(run_id)
    assert text.count("aborted by") == 1, text
    thread = [t for t in deployer.thread_texts(run_id) if "abort" in t]
    assert len(thread) == 1 and "aborted by <@U0BOB0002> during “Roll out”" in thread[0], thread


def test_a_long_result_is_cut_at_a_word_with_an_ellipsis() -> None:
    """A step's result line longer than the message shows is cut between words, and says it was cut."""
    words = " · ".join(f"check_{i}=0.{i:03d} ok" for i in range(60))
    step = RunStep(run_id="r-1", idx=0, phase="main", kind="monitor", name="Monitoring window", status="done",
                   detail=words, data={})
    shown = step_line(step).split("\n")[1].strip().strip("_")
    assert shown.endswith("…") and len(shown) <= 300
    assert words.startswith(shown[:-1]) and words[len(shown) - 1] in " ·", shown[-20:]


def test_an_image_left_behind_is_named_as_a_code_span() -> None:
    """What a run left behind names images in backticks, like the rest of the message."""
    change = Change("image:trading-prod/app", "app image", f"{IMAGE}:v2.2.0", f"{IMAGE}:v2.3")
    assert change.describe() == f"app image: `{IMAGE}:v2.3` (was `{IMAGE}:v2.2.0`)"
    assert Change("trading", "trading", "on", "stopped").describe() == "trading: stopped (was on)"
