"""Canary analysis as pure logic: thresholds, templates, verdicts and the per-step tracker."""

from __future__ import annotations

import json
import math

import pytest

from bot.core.analysis import (
    DEFAULT_CHECKS,
    AnalysisResult,
    AnalysisTracker,
    Check,
    CheckResult,
    analyse,
    default_checks,
    render,
    validate_template,
)
from bot.errors import BackendUnavailable, ConfigError, IntegrationError, InvalidTransition

VARS = {"namespace": "trading", "deployment": "trading-bot-swarm", "canary": "trading-bot-swarm-canary",
        "version": "v2.2"}


class StubSource:
    """A MetricsSource answering by check name found in the query (`metric_<name>`), recording queries."""

    def __init__(self, answers: dict[str, float | None | Exception]) -> None:
        self.answers = answers
        self.queries: list[str] = []

    def query(self, promql: str) -> float | None:
        self.queries.append(promql)
        for key, answer in self.answers.items():
            if key in promql:
                if isinstance(answer, Exception):
                    raise answer
                return answer
        return None


def check(name: str, op: str = ">", threshold: float = 0.05, unit: str = "") -> Check:
    return Check(name, f'metric_{name}{{namespace="{{namespace}}"}}', op, threshold, unit)  # type: ignore[arg-type]


THREE = (check("error_rate", ">", 0.05), check("p95_latency_ms", ">", 1000, "ms"),
         check("order_success", "<", 0.99))


def results(**values: float | None | Exception) -> AnalysisResult:
    return analyse(StubSource({f"metric_{k}": v for k, v in values.items()}), THREE, VARS)


# -- thresholds -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("op", "value", "fails"), [
    (">", 0.06, True), (">", 0.05, False), (">", 0.04, False),
    (">=", 0.05, True), (">=", 0.04, False),
    ("<", 0.04, True), ("<", 0.05, False), ("<", 0.06, False),
    ("<=", 0.05, True), ("<=", 0.06, False),
])
def test_check_fails_exactly_when_value_op_threshold_holds(op: str, value: float, fails: bool) -> None:
    """Each operator fails when `value op threshold` holds, with the boundary as written."""
    assert check("x", op, 0.05).fails(value) is fails


def test_unknown_operator_is_a_config_error() -> None:
    """An operator outside < > <= >= is refused when the check is built."""
    with pytest.raises(ConfigError, match="op must be one of"):
        check("x", "==", 1)


def test_non_finite_threshold_is_a_config_error() -> None:
    """A NaN or infinite threshold is refused."""
    with pytest.raises(ConfigError, match="finite"):
        check("x", ">", math.nan)


def test_default_checks_follow_the_runbook() -> None:
    """The defaults fail on error rate > 5 %, p95 > 1000 ms and order success < 99 %, over 1m windows."""
    assert [(c.name, c.op, c.threshold) for c in DEFAULT_CHECKS] == [
        ("error_rate", ">", 0.05), ("p95_latency_ms", ">", 1000.0), ("order_success", "<", 0.99)]
    assert all("[1m]" in c.query and 'version="canary"' in c.query for c in DEFAULT_CHECKS)


def test_default_checks_take_a_shorter_window() -> None:
    """default_checks("10s") is the same checks over 10 s rate windows."""
    short = default_checks("10s")
    assert [c.query.replace("[10s]", "[1m]") for c in short] == [c.query for c in DEFAULT_CHECKS]


# -- templates --------------------------------------------------------------------------------------

def test_default_check_templates_are_valid() -> None:
    """The shipped queries validate cleanly."""
    assert [validate_template(c.query) for c in DEFAULT_CHECKS] == [[], [], []]


def test_render_substitutes_placeholders_inside_promql_braces() -> None:
    """{namespace} inside a selector is replaced and the selector's own braces stay."""
    assert render('up{namespace="{namespace}",deployment="{canary}"}', VARS) == \
        'up{namespace="trading",deployment="trading-bot-swarm-canary"}'


def test_unknown_placeholder_is_reported() -> None:
    """An unknown placeholder is named, with the known ones listed."""
    problems = validate_template('up{namespace="{nmespace}"}')
    assert len(problems) == 1 and "{nmespace}" in problems[0] and "{namespace}" in problems[0]


def test_doubled_braces_are_reported() -> None:
    """str.format-style {{ }} escaping is flagged: PromQL braces are written as-is."""
    assert any("'{{'" in p for p in validate_template('up{{namespace="{namespace}"}}'))


def test_format_spec_in_placeholder_is_reported() -> None:
    """{namespace!r} or {namespace:>10} is flagged."""
    assert any("format spec" in p for p in validate_template('up{namespace="{namespace!r}"}'))


def test_unbalanced_brackets_are_reported() -> None:
    """A missing closing parenthesis is caught at config time."""
    assert any("unclosed" in p for p in validate_template("sum(rate(up[1m])"))


def test_brackets_inside_strings_are_ignored() -> None:
    """A brace inside a PromQL string literal is not counted as a bracket."""
    assert validate_template('up{path=~"}[({"}') == []


def test_check_with_unknown_placeholder_is_refused() -> None:
    """Building a Check validates its template."""
    with pytest.raises(ConfigError, match="unknown placeholder"):
        Check("x", 'up{namespace="{ns}"}', ">", 1)


def test_render_without_a_needed_variable_is_a_config_error() -> None:
    """A placeholder with no value raises ConfigError naming it."""
    with pytest.raises(ConfigError, match=r"\{canary\} is used but no value"):
        render('up{deployment="{canary}"}', {"namespace": "trading"})


def test_render_refuses_values_that_would_break_out_of_a_string() -> None:
    """A value with a quote is refused rather than spliced into PromQL."""
    with pytest.raises(ConfigError, match="not a plain name"):
        render('up{namespace="{namespace}"}', {"namespace": 'x"} or vector(1) #'})


# -- analyse ----------------------------------------------------------------------------------------

def test_all_checks_passing_is_a_pass() -> None:
    """Good numbers on every check give an overall pass."""
    assert results(error_rate=0.01, p95_latency_ms=120, order_success=0.995).verdict == "pass"


def test_one_failing_check_fails_the_interval() -> None:
    """A single failing check fails the interval."""
    result = results(error_rate=0.21, p95_latency_ms=120, order_success=0.995)
    assert result.verdict == "fail"
    assert [c.verdict for c in result.checks] == ["fail", "pass", "pass"]


def test_no_data_is_inconclusive() -> None:
    """A check without data makes an otherwise good interval inconclusive."""
    result = results(error_rate=None, p95_latency_ms=120, order_success=0.995)
    assert (result.verdict, result.checks[0].verdict) == ("inconclusive", "inconclusive")


def test_nan_from_the_source_is_inconclusive() -> None:
    """A NaN value (a source that does not map it to None) is inconclusive, not a pass."""
    assert results(error_rate=math.nan, p95_latency_ms=120, order_success=0.995).verdict == "inconclusive"


def test_failure_outranks_inconclusive() -> None:
    """A fail and an inconclusive together give fail."""
    assert results(error_rate=0.5, p95_latency_ms=None, order_success=0.995).verdict == "fail"


def test_infinity_fails_a_greater_than_check() -> None:
    """+Inf latency fails the > check."""
    assert results(error_rate=0.0, p95_latency_ms=math.inf, order_success=1.0).checks[1].verdict == "fail"


def test_unreachable_prometheus_fails_safe() -> None:
    """BackendUnavailable fails the interval; every check is an error naming the cause."""
    result = results(error_rate=BackendUnavailable("prometheus", "connection refused"))
    assert result.verdict == "fail"
    assert all(c.verdict == "error" and c.detail == "prometheus unreachable: prometheus: connection refused"
               for c in result.checks)


def test_unreachable_prometheus_is_asked_only_once() -> None:
    """After BackendUnavailable the remaining checks are not queried (no timeout per check)."""
    source = StubSource({"metric_": BackendUnavailable("prometheus", "timed out")})
    analyse(source, THREE, VARS)
    assert len(source.queries) == 1


def test_bad_promql_fails_the_interval_and_other_checks_still_run() -> None:
    """An IntegrationError on one check is an error (fail) with the message; the others still run."""
    result = results(error_rate=IntegrationError("prometheus", "bad_data: parse error"), p95_latency_ms=120,
                     order_success=0.995)
    assert result.verdict == "fail"
    assert result.checks[0].verdict == "error" and "bad_data: parse error" in result.checks[0].detail
    assert [c.verdict for c in result.checks[1:]] == ["pass", "pass"]


def test_missing_variable_fails_the_check() -> None:
    """A template variable without a value is an error, so the interval fails safe."""
    result = analyse(StubSource({"metric_x": 0.0}), [check("x")], {})
    assert result.verdict == "fail" and "{namespace} is used but no value" in result.checks[0].detail


def test_no_checks_is_a_config_error() -> None:
    """Analysing with no checks at all is refused."""
    with pytest.raises(ConfigError):
        analyse(StubSource({}), [], VARS)


def test_summary_line() -> None:
    """summary() reads `name=value op threshold FAIL · name=value ok · ...`."""
    result = results(error_rate=0.21, p95_latency_ms=120, order_success=0.995)
    assert result.summary() == "error_rate=0.21 > 0.05 FAIL · p95_latency_ms=120 ok · order_success=0.995 ok"


def test_summary_shows_inconclusive_and_error_checks() -> None:
    """Inconclusive and error checks are marked in the summary."""
    result = results(error_rate=None, p95_latency_ms=IntegrationError("prometheus", "bad_data: x"),
                     order_success=0.995)
    assert result.summary() == ("error_rate=no data INCONCLUSIVE · p95_latency_ms ERROR (query failed: "
                                "prometheus: bad_data: x) · order_success=0.995 ok")


def test_analysis_result_round_trips_through_json() -> None:
    """AnalysisResult.to_dict() survives JSON and from_dict() rebuilds an equal result."""
    result = results(error_rate=0.21, p95_latency_ms=None, order_success=0.995)
    assert AnalysisResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result


# -- tracker ----------------------------------------------------------------------------------------

PASS = AnalysisResult("pass", (CheckResult("x", 0.0, "pass", ""),))
FAIL = AnalysisResult("fail", (CheckResult("x", 1.0, "fail", ""),))
INCONCLUSIVE = AnalysisResult("inconclusive", (CheckResult("x", None, "inconclusive", ""),))


def test_first_failure_rolls_back_by_default() -> None:
    """With the default failure_limit of 1 the first failed interval rolls back."""
    assert AnalysisTracker().record(FAIL) == "rollback"


def test_failure_limit_allows_earlier_failures() -> None:
    """failure_limit=2 continues after one failure and rolls back at the second."""
    tracker = AnalysisTracker(failure_limit=2, intervals_required=3)
    assert [tracker.record(r) for r in (FAIL, PASS, FAIL)] == ["continue", "continue", "rollback"]


def test_too_many_inconclusive_intervals_roll_back() -> None:
    """The third inconclusive interval (default limit 3) rolls back: fail safe."""
    tracker = AnalysisTracker()
    assert [tracker.record(INCONCLUSIVE) for _ in range(3)] == ["continue", "continue", "rollback"]
    assert "failing safe" in tracker.reason


def test_a_passed_interval_promotes_by_default() -> None:
    """With intervals_required=1 one passed interval promotes."""
    assert AnalysisTracker().record(PASS) == "promote"


def test_promotion_needs_the_required_passes() -> None:
    """intervals_required=3 promotes at the third pass; inconclusive intervals do not count."""
    tracker = AnalysisTracker(intervals_required=3)
    assert [tracker.record(r) for r in (PASS, INCONCLUSIVE, PASS, PASS)] == [
        "continue", "continue", "continue", "promote"]


def test_tracker_refuses_results_after_a_decision() -> None:
    """Recording after rollback or promotion raises InvalidTransition."""
    tracker = AnalysisTracker()
    tracker.record(FAIL)
    with pytest.raises(InvalidTransition):
        tracker.record(PASS)


def test_tracker_counts_consecutive_results() -> None:
    """Consecutive counters reset when a different verdict arrives."""
    tracker = AnalysisTracker(failure_limit=5, inconclusive_limit=5, intervals_required=5)
    for r in (FAIL, FAIL, INCONCLUSIVE, FAIL):
        tracker.record(r)
    assert (tracker.failures, tracker.consecutive_failures, tracker.consecutive_inconclusives) == (3, 1, 0)


def test_tracker_round_trips_and_resumes() -> None:
    """A tracker rebuilt from to_dict() (through JSON) equals the original and decides the same next."""
    tracker = AnalysisTracker(failure_limit=2, inconclusive_limit=2, intervals_required=2)
    tracker.record(FAIL)
    tracker.record(PASS)
    restored = AnalysisTracker.from_dict(json.loads(json.dumps(tracker.to_dict())))
    assert restored == tracker
    assert restored.record(INCONCLUSIVE) == tracker.record(INCONCLUSIVE) == "continue"
    assert restored.record(PASS) == "promote"


def test_tracker_limits_must_be_positive() -> None:
    """A zero limit is a config error."""
    with pytest.raises(ConfigError, match="failure_limit"):
        AnalysisTracker(failure_limit=0)


def test_tracker_state_of_unknown_version_is_refused() -> None:
    """from_dict() refuses state written by an unknown format version."""
    with pytest.raises(ValueError, match="version"):
        AnalysisTracker.from_dict({**AnalysisTracker().to_dict(), "v": 99})


# -- the consecutive-error limit (Prometheus not answering) --------------------------------------------

def test_errors_are_counted_apart_and_only_a_run_of_them_rolls_back() -> None:
    tracker = AnalysisTracker(failure_limit=1, inconclusive_limit=3, intervals_required=2, error_limit=3)
    assert tracker.record_error("prometheus unreachable: down") == "continue"
    assert tracker.record_error("prometheus unreachable: down") == "continue"
    assert tracker.record("pass") == "continue"  # an answer resets the run of errors
    assert tracker.consecutive_errors == 0 and tracker.failures == 0 and tracker.inconclusives == 0
    for _ in range(2):
        assert tracker.record_error("prometheus unreachable: down") == "continue"
    assert tracker.record_error("prometheus unreachable: down") == "rollback"
    assert tracker.reason == "Prometheus unreachable for 3 intervals in a row"


def test_a_version_1_tracker_state_still_loads_with_the_default_error_limit() -> None:
    state = AnalysisTracker(failure_limit=2).to_dict()
    state = {k: v for k, v in state.items() if k not in ("error_limit", "consecutive_errors")} | {"v": 1}
    tracker = AnalysisTracker.from_dict(state)
    assert tracker.error_limit == 4 and tracker.consecutive_errors == 0 and tracker.failure_limit == 2
    assert AnalysisTracker.from_dict(tracker.to_dict()) == tracker


def test_unreachable_names_prometheus_only_when_no_check_was_read() -> None:
    class Down:
        def query(self, promql: str) -> float | None:
            raise BackendUnavailable("prometheus", "connection refused")

    checks = [Check("error_rate", "x", ">", 0.05), Check("p95", "y", ">", 1000)]
    result = analyse(Down(), checks, {})
    assert result.verdict == "fail" and (result.unreachable or "").startswith("prometheus unreachable")
    assert "connection refused" in (result.unreachable or "")

    class Up:
        def query(self, promql: str) -> float | None:
            return 0.001

    assert analyse(Up(), checks, {}).unreachable is None
