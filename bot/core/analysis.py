"""Canary analysis: threshold checks over PromQL, one verdict per interval, and a per-step tracker.

Pure logic plus the `MetricsSource` port; Slack-free and stateless apart from `AnalysisTracker`, whose
state the caller persists as a plain dict (`to_dict()` / `from_dict()`).

Query templates
---------------
A check's query is PromQL with placeholders written as an identifier alone in braces, `{namespace}`.
Literal PromQL braces are written as they are, with no escaping::

    sum(rate(http_requests_total{namespace="{namespace}",version="canary"}[1m]))

This is unambiguous because a PromQL selector's braces always hold matchers (`label="value"`, `=~`, ...)
or nothing, so `{word}` can never be PromQL. (Placeholders are found inside string literals too,
which is what puts `{namespace}` into `"..."`; a regex matcher therefore cannot hold a literal `{word}`.)
Known placeholders: `{namespace}`, `{deployment}`, `{canary}` (the canary Deployment or subset name) and
`{version}`. `validate_template()` reports unknown placeholders, `{{`/`}}` (str.format escaping is not
used here) and unbalanced brackets at config time.
Substituted values must be plain names (letters, digits, `._:/@+-`): they land inside PromQL string
literals, so a quote or brace in a value is refused rather than escaped.

Verdicts (fail safe)
--------------------
A check *fails* when `value <op> threshold` holds (error_rate `>` 0.05 fails). No data or NaN is
*inconclusive*. Prometheus unreachable, bad PromQL or a template error is an *error*. Overall: any fail
or error -> fail; else any inconclusive -> inconclusive; else pass.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

from bot.core.ports import MetricsSource
from bot.errors import BackendUnavailable, ChatOpsError, ConfigError, IntegrationError, InvalidTransition

Op = Literal["<", ">", "<=", ">="]
CheckVerdict = Literal["pass", "fail", "inconclusive", "error"]
Verdict = Literal["pass", "fail", "inconclusive"]
Decision = Literal["continue", "promote", "rollback"]

PLACEHOLDERS: tuple[str, ...] = ("namespace", "deployment", "canary", "version")
_OPS: dict[str, Callable[[float, float], bool]] = {"<": operator.lt, ">": operator.gt, "<=": operator.le,
                                                  ">=": operator.ge}
_PLACEHOLDER_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_FORMATISH_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)[!:][^{}]*\}")
_SAFE_VALUE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]*$")
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_PAIRS = {"(": ")", "{": "}", "[": "]"}


# -- templates --------------------------------------------------------------------------------------

def placeholders(query: str) -> list[str]:
    """The placeholder names a template uses, in order of first appearance."""
    return list(dict.fromkeys(_PLACEHOLDER_RE.findall(query)))


def validate_template(query: str) -> list[str]:
    """Problems with a query template (empty list when it is fine), for config-time checking."""
    problems: list[str] = []
    if not query.strip():
        return ["query is empty"]
    unknown = [name for name in placeholders(query) if name not in PLACEHOLDERS]
    if unknown:
        problems.append(f"unknown placeholder(s) {', '.join('{' + n + '}' for n in unknown)}; "
                        f"known: {', '.join('{' + n + '}' for n in PLACEHOLDERS)}")
    for name in dict.fromkeys(_FORMATISH_RE.findall(query)):
        problems.append(f"placeholder {{{name}}} takes no conversion or format spec")
    if "{{" in query or "}}" in query:
        problems.append("'{{' / '}}' found: literal PromQL braces are written as-is, not doubled")
    bracket_problem = _bracket_problem(_PLACEHOLDER_RE.sub("x", query))
    if bracket_problem:
        problems.append(bracket_problem)
    return problems


def render(query: str, variables: Mapping[str, str]) -> str:
    """Substitute the placeholders of `query`; raises ConfigError naming every problem."""
    problems = validate_template(query)
    for name in placeholders(query):
        if name not in PLACEHOLDERS:
            continue
        value = variables.get(name)
        if value is None:
            problems.append(f"{{{name}}} is used but no value was given")
        elif not _SAFE_VALUE_RE.match(str(value)):
            problems.append(f"value {value!r} for {{{name}}} is not a plain name (letters, digits, ._:/@+-)")
    if problems:
        raise ConfigError(problems, source="analysis query")
    return _PLACEHOLDER_RE.sub(lambda m: str(variables[m.group(1)]), query)


def _bracket_problem(text: str) -> str | None:
    """First unbalanced (), {} or [] outside PromQL string literals, or None."""
    stack: list[str] = []
    quote: str | None = None
    escaped = False
    for ch in text:
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\" and quote != "`":
                escaped = True
            elif ch == quote:
                quote = None
        elif ch in "\"'`":
            quote = ch
        elif ch in _PAIRS:
            stack.append(_PAIRS[ch])
        elif ch in ")}]":
            if not stack or stack.pop() != ch:
                return f"unbalanced {ch!r}"
    if quote:
        return f"unterminated string literal ({quote})"
    if stack:
        return f"unclosed bracket (expected {stack[-1]!r})"
    return None


# -- checks -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Check:
    """A threshold check: it FAILS when `value <op> threshold` holds."""

    name: str
    query: str
    op: Op
    threshold: float
    unit: str = ""

    def __post_init__(self) -> None:
        problems = [f"check {self.name!r}: {p}" for p in validate_template(self.query)]
        if not _NAME_RE.match(self.name):
            problems.append(f"check name {self.name!r} must be a word (letters, digits, _ . -)")
        if self.op not in _OPS:
            problems.append(f"check {self.name!r}: op must be one of {', '.join(_OPS)}, not {self.op!r}")
        if not isinstance(self.threshold, int | float) or not math.isfinite(self.threshold):
            problems.append(f"check {self.name!r}: threshold must be a finite number")
        if problems:
            raise ConfigError(problems, source="analysis")

    def fails(self, value: float) -> bool:
        return _OPS[self.op](value, self.threshold)


def default_checks(window: str = "1m") -> tuple[Check, ...]:
    """The runbook's canary checks (7.4 high-priority alerts, order success target) over a rate window.

    `window` is a PromQL duration; production uses 1m, tests use a few seconds to react faster.
    """
    sel = 'namespace="{namespace}",version="canary"'
    return (
        Check("error_rate",
              f'sum(rate(http_requests_total{{{sel},status=~"5.."}}[{window}]))'
              f" / sum(rate(http_requests_total{{{sel}}}[{window}]))",
              ">", 0.05),
        Check("p95_latency_ms",
              f"histogram_quantile(0.95, sum by (le) (rate(http_request_duration_seconds_bucket{{{sel}}}"
              f"[{window}]))) * 1000",
              ">", 1000.0, "ms"),
        Check("order_success",
              f"sum(rate(orders_successful_total{{{sel}}}[{window}]))"
              f" / sum(rate(orders_total{{{sel}}}[{window}]))",
              "<", 0.99),
    )


DEFAULT_CHECKS: tuple[Check, ...] = default_checks("1m")


# -- results ----------------------------------------------------------------------------------------

def _fmt(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return f"{value:.4g}"


@dataclass(frozen=True)
class CheckResult:
    name: str
    value: float | None
    verdict: CheckVerdict
    detail: str

    def summary(self) -> str:
        shown = "no data" if self.value is None else _fmt(self.value)
        if self.verdict == "pass":
            return f"{self.name}={shown} ok"
        if self.verdict == "fail":
            return f"{self.name}={self.detail} FAIL"
        if self.verdict == "inconclusive":
            return f"{self.name}={shown} INCONCLUSIVE"
        return f"{self.name} ERROR ({self.detail})"


@dataclass(frozen=True)
class AnalysisResult:
    verdict: Verdict
    checks: tuple[CheckResult, ...]

    def summary(self) -> str:
        """One line, e.g. `error_rate=0.21 > 0.05 FAIL · p95_latency_ms=120 ok · order_success=0.995 ok`."""
        return " · ".join(c.summary() for c in self.checks)

    @property
    def unreachable(self) -> str | None:
        """Why no check could be evaluated because Prometheus did not answer (None: it answered)."""
        reasons = {c.detail for c in self.checks if c.verdict == "error" and c.detail.startswith("prometheus")}
        if self.checks and len(reasons) == 1 and all(c.verdict == "error" for c in self.checks):
            return reasons.pop()
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "checks": [asdict(c) for c in self.checks]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AnalysisResult:
        return cls(data["verdict"], tuple(CheckResult(**c) for c in data["checks"]))


def _evaluate(check: Check, value: float | None) -> CheckResult:
    if value is None or math.isnan(value):
        return CheckResult(check.name, None, "inconclusive", "no data (or NaN: no traffic?)")
    unit = f" {check.unit}" if check.unit else ""
    if check.fails(value):
        return CheckResult(check.name, value, "fail", f"{_fmt(value)} {check.op} {_fmt(check.threshold)}")
    return CheckResult(check.name, value, "pass", f"{_fmt(value)}{unit} (fails when {check.op} "
                                                   f"{_fmt(check.threshold)}{unit})")


def analyse(source: MetricsSource, checks: Iterable[Check], variables: Mapping[str, str]) -> AnalysisResult:
    """Run every check once against `source` and judge the interval (fail safe, see the module doc)."""
    checks = tuple(checks)
    if not checks:
        raise ConfigError(["no analysis checks configured"], source="analysis")
    results: list[CheckResult] = []
    unreachable: str | None = None
    for check in checks:
        if unreachable is not None:  # do not wait out one timeout per check
            results.append(CheckResult(check.name, None, "error", unreachable))
            continue
        try:
            value = source.query(render(check.query, variables))
        except BackendUnavailable as exc:
            unreachable = f"prometheus unreachable: {exc.message}"
            results.append(CheckResult(check.name, None, "error", unreachable))
            continue
        except IntegrationError as exc:
            results.append(CheckResult(check.name, None, "error", f"query failed: {exc.message}"))
            continue
        except ChatOpsError as exc:  # ConfigError from render: missing or unsafe variables
            results.append(CheckResult(check.name, None, "error", exc.message))
            continue
        results.append(_evaluate(check, value))
    verdicts = {r.verdict for r in results}
    overall: Verdict = ("fail" if verdicts & {"fail", "error"}
                        else "inconclusive" if "inconclusive" in verdicts else "pass")
    return AnalysisResult(overall, tuple(results))


# -- the per-step tracker ---------------------------------------------------------------------------

class AnalysisTracker:
    """Counts interval verdicts for one canary step and decides continue / promote / rollback.

    Limits count totals within the step (a flapping canary is not reset by a good interval):
    `failure_limit` failed intervals roll back (default 1: the first), `inconclusive_limit` inconclusive
    intervals roll back too (fail safe, default 3), and `intervals_required` passed intervals promote.
    Once decided, the tracker refuses further results (InvalidTransition).
    """

    VERSION = 2  # 2 added the consecutive-error limit; version 1 states still load

    def __init__(self, *, failure_limit: int = 1, inconclusive_limit: int = 3,
                 intervals_required: int = 1, error_limit: int = 4) -> None:
        limits = {"failure_limit": failure_limit, "inconclusive_limit": inconclusive_limit,
                  "intervals_required": intervals_required, "error_limit": error_limit}
        problems = [f"{name} must be a whole number >= 1, not {value!r}" for name, value in limits.items()
                    if isinstance(value, bool) or not isinstance(value, int) or value < 1]
        if problems:
            raise ConfigError(problems, source="analysis")
        self.failure_limit = failure_limit
        self.inconclusive_limit = inconclusive_limit
        self.intervals_required = intervals_required
        self.error_limit = error_limit  # Argo Rollouts' consecutiveErrorLimit: Prometheus not answering
        self.consecutive_errors = 0
        self.passes = 0
        self.failures = 0
        self.inconclusives = 0
        self.consecutive_failures = 0
        self.consecutive_inconclusives = 0
        self.history: list[Verdict] = []
        self.decision: Decision = "continue"
        self.reason = ""

    @property
    def decided(self) -> bool:
        return self.decision != "continue"

    def record_error(self, why: str) -> Decision:
        """An interval in which the metrics could not be read at all (Prometheus down or not answering):
        counted apart from failed and inconclusive results; `error_limit` in a row roll back."""
        if self.decided:
            raise InvalidTransition("canary analysis", self.decision, "record")
        self.consecutive_errors += 1
        if self.consecutive_errors >= self.error_limit:
            self.decision = "rollback"
            self.reason = f"{why.split(':')[0].capitalize()} for {self.consecutive_errors} intervals in a row"
        return self.decision

    def record(self, result: AnalysisResult | Verdict) -> Decision:
        """Add one interval's verdict; returns what the step should do now."""
        verdict = result.verdict if isinstance(result, AnalysisResult) else result
        self.consecutive_errors = 0
        if verdict not in ("pass", "fail", "inconclusive"):
            raise ValueError(f"unknown verdict {verdict!r}")
        if self.decided:
            raise InvalidTransition("canary analysis", self.decision, "record")
        self.history.append(verdict)
        if verdict == "fail":
            self.failures += 1
            self.consecutive_failures += 1
            self.consecutive_inconclusives = 0
        elif verdict == "inconclusive":
            self.inconclusives += 1
            self.consecutive_inconclusives += 1
            self.consecutive_failures = 0
        else:
            self.passes += 1
            self.consecutive_failures = self.consecutive_inconclusives = 0
        if self.failures >= self.failure_limit:
            self.decision = "rollback"
            self.reason = f"{self.failures} failed interval(s) (limit {self.failure_limit})"
        elif self.inconclusives >= self.inconclusive_limit:
            self.decision, self.reason = ("rollback", f"{self.inconclusives} inconclusive interval(s) "
                                          f"(limit {self.inconclusive_limit}): failing safe")
        elif self.passes >= self.intervals_required:
            self.decision, self.reason = "promote", f"{self.passes} passed interval(s)"
        return self.decision

    def to_dict(self) -> dict[str, Any]:
        return {"v": self.VERSION, "error_limit": self.error_limit, "consecutive_errors": self.consecutive_errors,
                "failure_limit": self.failure_limit,
                "inconclusive_limit": self.inconclusive_limit, "intervals_required": self.intervals_required,
                "passes": self.passes, "failures": self.failures, "inconclusives": self.inconclusives,
                "consecutive_failures": self.consecutive_failures,
                "consecutive_inconclusives": self.consecutive_inconclusives,
                "history": list(self.history), "decision": self.decision, "reason": self.reason}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AnalysisTracker:
        if data.get("v") not in (1, cls.VERSION):
            raise ValueError(f"unsupported analysis tracker state version {data.get('v')!r}")
        tracker = cls(failure_limit=data["failure_limit"], inconclusive_limit=data["inconclusive_limit"],
                      intervals_required=data["intervals_required"], error_limit=int(data.get("error_limit", 4)))
        tracker.consecutive_errors = int(data.get("consecutive_errors", 0))
        for key in ("passes", "failures", "inconclusives", "consecutive_failures",
                    "consecutive_inconclusives"):
            setattr(tracker, key, int(data[key]))
        tracker.history = list(data["history"])
        tracker.decision = data["decision"]
        tracker.reason = str(data["reason"])
        return tracker

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AnalysisTracker) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"AnalysisTracker(decision={self.decision!r}, passes={self.passes}, "
                f"failures={self.failures}, inconclusives={self.inconclusives})")
