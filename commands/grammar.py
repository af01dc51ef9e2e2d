"""One grammar for Slack, the console and tests: `text` -> typed command object.

A command is declared once as a `CommandSpec` (positionals, flags, value types) and a frozen
dataclass. `parse_args` never raises anything but `CommandError` (and its subclasses):
unknown flags, malformed values, unknown environments and missing arguments all name the
problem and carry the usage line. What the user typed is quoted back through `user_text()`
(redacted and escaped), so an error message cannot carry markup either.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from bot.blocks import user_text
from bot.config import Config
from bot.errors import CommandError, UnknownEnvironment

MAX_INPUT = 2000
_QUOTES = str.maketrans({"\u201c": '"', "\u201d": '"', "\u2018": "'", "\u2019": "'", "\u00a0": " "})
VERSION_RE = re.compile(r"^v[0-9]{1,4}(\.[0-9]{1,4}){1,2}(-[0-9A-Za-z][0-9A-Za-z.-]{0,30})?$")
_DECIMAL_RE = re.compile(r"^([0-9]{1,6}(\.[0-9]{1,6})?|\.[0-9]{1,6})$")  # ASCII digits only
_DURATION_RE = re.compile(r"^(\d{1,5})([mhdw])$")
_MENTION_RE = re.compile(r"^<@([UW][A-Z0-9]{2,})(\|[^>]*)?>$")


def tokenize(text: str) -> list[str]:
    """Split like a shell, with Slack's smart quotes understood; unbalanced quotes are an error."""
    text = text.translate(_QUOTES)
    tokens: list[str] = []
    buf: list[str] = []
    quote: str | None = None
    in_token = False
    for ch in text:
        if quote:
            if ch == quote:
                quote = None
            else:
                buf.append(ch)
        elif ch in "\"'" and (not buf or ch == '"'):
            # a quote opens quoting at a token's start (or "...": always); inside a word an
            # apostrophe is just a letter: --reason don't
            quote = ch
            in_token = True
        elif ch.isspace():
            if in_token:
                tokens.append("".join(buf))
                buf, in_token = [], False
        else:
            buf.append(ch)
            in_token = True
    if quote:
        raise CommandError(f"unbalanced {quote} quote")
    if in_token:
        tokens.append("".join(buf))
    return tokens


# --- value types ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ParseContext:
    config: Config


ValueParser = Callable[[str, ParseContext], Any]


def version_value(raw: str, _ctx: ParseContext) -> str:
    """A release tag exactly as it is tagged (v2.3, v2.3.1-rc.1). `2.3` and `V2.3` are refused alike,
    with the tag they probably mean: a deploy never guesses which image to run."""
    if VERSION_RE.match(raw):
        return raw
    guess = "v" + raw[1:] if raw[:1] == "V" else "v" + raw
    if VERSION_RE.match(guess):
        raise CommandError(f"{raw!r} is not a release tag (tags start with a lowercase v)",
                           hint=f"Did you mean `{guess}`?")
    raise ValueError(f"{raw!r} is not a version (expected something like v2.3 or v2.3.1)")


def env_value(raw: str, ctx: ParseContext) -> str:
    if raw not in ctx.config.environments:
        known = ", ".join(sorted(ctx.config.environments))
        raise UnknownEnvironment(f"unknown environment {raw!r}", hint=f"Known environments: {known}.")
    return raw


def text_value(raw: str, _ctx: ParseContext) -> str:
    """Free text (a reason): a secret pasted into it is redacted here, before it is stored anywhere (a
    lock's reason, a run's reason, the audit log) — not only where it is shown."""
    if not raw.strip():
        raise ValueError("must not be empty")
    from bot.core.redact import redact_text

    return redact_text(raw)


def user_value(raw: str, ctx: ParseContext) -> str:
    """A person: config name, <@U123> mention or a bare user id -> Slack user id."""
    mention = _MENTION_RE.match(raw)
    if mention:
        return mention.group(1)
    uid = ctx.config.user_id_of(raw.lstrip("@"))
    if uid is None:
        raise ValueError(f"{raw!r} is not a known person (use a name from the config or @mention)")
    return uid


def when_value(raw: str, _ctx: ParseContext) -> str:
    """ISO date/time (UTC if no zone) or a relative age like 30m, 24h, 7d, 2w -> ISO string."""
    match = _DURATION_RE.match(raw)
    if match:
        amount, unit = int(match.group(1)), match.group(2)
        delta = {"m": timedelta(minutes=amount), "h": timedelta(hours=amount),
                 "d": timedelta(days=amount), "w": timedelta(weeks=amount)}[unit]
        moment = datetime.now(UTC) - delta
    else:
        try:
            moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{raw!r} is not a time (use 2026-11-27, 2026-11-27T10:00 or 24h / 7d)") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
    try:
        moment = moment.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{raw!r} is out of range") from None
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def int_value(low: int, high: int) -> ValueParser:
    def parse(raw: str, _ctx: ParseContext) -> int:
        if not re.fullmatch(r"-?\d{1,9}", raw):
            raise ValueError(f"{raw!r} is not a whole number")
        value = int(raw)
        if not low <= value <= high:
            raise ValueError(f"must be a whole number from {low} to {high}")
        return value

    return parse


def decimal_value(low: float, high: float, accepted: str) -> ValueParser:
    """A plain decimal number (2, 0.5, .25) from `low` to `high` inclusive; `accepted` says so in words.
    No exponents, infinities, NaN or underscores: what is accepted is what the help says."""
    def parse(raw: str, _ctx: ParseContext) -> float:
        if not _DECIMAL_RE.match(raw):
            raise ValueError(f"{raw!r} is not a plain number; {accepted}")
        value = float(raw)
        if not low <= value <= high:
            raise ValueError(f"{raw} is out of range; {accepted}")
        return value

    return parse


def bounded_int(value: Any, low: int, high: int, what: str) -> int:
    """A whole number taken from a button value (JSON), checked before it reaches a query: a bool, a
    float such as 1e20 or an integer the database cannot hold is a ValueError naming `what`."""
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"malformed button ({what})")
    return value


# --- specs ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Positional:
    name: str
    parse: ValueParser
    help: str
    required: bool = True
    greedy: bool = False  # takes the rest of the line (free text)


@dataclass(frozen=True)
class Flag:
    name: str  # "env" for --env
    help: str
    parse: ValueParser | None = None  # None: a boolean switch
    metavar: str = "VALUE"
    dest: str | None = None
    repeat: bool = False
    required: bool = False  # shown without [ ] in the usage, and parsing fails without it

    @property
    def key(self) -> str:
        return self.dest or self.name.replace("-", "_")


@dataclass(frozen=True)
class CommandSpec:
    name: str  # without the slash
    summary: str
    target: type  # frozen dataclass built from the parsed values
    positionals: Sequence[Positional] = ()
    flags: Sequence[Flag] = ()
    exclusive: Sequence[tuple[str, ...]] = ()
    examples: Sequence[str] = ()
    details: str = ""
    defaults: dict[str, Any] = field(default_factory=dict)
    #: the name registered with Slack when Slack reserves `name` (e.g. /status is a Slack built-in)
    slack_name: str | None = None
    #: help lines that depend on the config (e.g. each environment's canary steps)
    config_details: Callable[[Config], str] | None = None

    @property
    def usage(self) -> str:
        parts = [f"/{self.name}"]
        for pos in self.positionals:
            token = pos.name.upper() + ("..." if pos.greedy else "")
            parts.append(token if pos.required else f"[{token}]")
        groups = {n for grp in self.exclusive for n in grp}
        for grp in self.exclusive:
            parts.append("[" + " | ".join(f"--{n}" for n in grp) + "]")
        for flag in self.flags:
            if flag.name in groups:
                continue
            token = f"--{flag.name}{'' if flag.parse is None else ' ' + flag.metavar}"
            parts.append(token if flag.required else f"[{token}]")
        return " ".join(parts)

    def help_text(self, config: Config | None = None) -> str:
        lines = [f"*/{self.name}* — {self.summary}", f"Usage: `{self.usage}`"]
        if self.slack_name:
            lines.append(f"In Slack type `/{self.slack_name}` (Slack reserves /{self.name} for itself).")
        if self.details:
            lines.append(self.details)
        if config is not None and self.config_details is not None:
            lines.append(self.config_details(config))
        for pos in self.positionals:
            lines.append(f"• `{pos.name.upper()}` {pos.help}")
        for flag in self.flags:
            meta = "" if flag.parse is None else f" {flag.metavar}"
            lines.append(f"• `--{flag.name}{meta}` {flag.help}")
        lines.append("• `--help` show this help")
        if self.examples:
            lines.append("Examples: " + ", ".join(f"`{ex}`" for ex in self.examples))
        return "\n".join(lines)


@dataclass(frozen=True)
class HelpRequest:
    """Parsing produced a request for help instead of a command."""

    spec: CommandSpec
    config: Config | None = field(default=None, compare=False)

    def help_text(self) -> str:
        """The command's help as it applies to this config (e.g. each environment's canary steps)."""
        return self.spec.help_text(self.config)


def parse_args(spec: CommandSpec, text: str, ctx: ParseContext) -> Any:
    """Parse the text after the command name into `spec.target` (or a `HelpRequest`)."""
    try:
        return _parse(spec, text, ctx)
    except CommandError as exc:
        if exc.usage is None:
            exc.usage = spec.usage
        # the messages quote what was typed: shown redacted and escaped, like all user text
        exc.message = user_text(exc.message)
        raise
    except Exception as exc:  # a parser must never crash a front end
        raise CommandError(f"could not read the command ({type(exc).__name__})", usage=spec.usage) from exc


def _parse(spec: CommandSpec, text: str, ctx: ParseContext) -> Any:
    if len(text) > MAX_INPUT:
        raise CommandError(f"the command is too long ({len(text)} characters, at most {MAX_INPUT})")
    tokens = tokenize(text)
    if any(tok in ("--help", "-h", "help") and i == 0 or tok in ("--help", "-h") for i, tok in enumerate(tokens)):
        return HelpRequest(spec, ctx.config)
    flags = {f.name: f for f in spec.flags}
    values: dict[str, Any] = dict(spec.defaults)
    seen: set[str] = set()
    free: list[str] = []
    #: words typed right after a text option's value: most likely the rest of an unquoted text
    strays: dict[str, list[str]] = {}
    after_text: str | None = None
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        text_flag, after_text = after_text, None
        if tok.startswith("--") and len(tok) > 2:
            name, eq, inline = tok[2:].partition("=")
            flag = flags.get(name)
            if flag is None:
                raise CommandError(f"unknown option --{name}", hint=_suggest(name, flags))
            if name in seen and not flag.repeat:
                raise CommandError(f"--{name} was given twice")
            seen.add(name)
            if flag.parse is None:
                if eq:
                    raise CommandError(f"--{name} takes no value")
                values[flag.key] = True
            else:
                if eq:
                    raw = inline
                elif i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
                    i += 1
                    raw = tokens[i]
                else:
                    raise CommandError(f"--{name} needs a value ({flag.metavar})")
                value = _convert(flag.parse, raw, ctx, f"--{name}")
                if flag.metavar == "TEXT":
                    after_text = name
                    strays[name] = [raw]
                if flag.repeat:
                    values.setdefault(flag.key, ())
                    values[flag.key] = (*values[flag.key], value)
                else:
                    values[flag.key] = value
        elif tok.startswith("-") and len(tok) > 1 and not re.fullmatch(r"-\d+", tok):
            raise CommandError(f"unknown option {tok} (options start with --)")
        else:
            free.append(tok)
            if text_flag is not None:
                strays[text_flag].append(tok)
                after_text = text_flag
        i += 1
    for flag in spec.flags:
        if flag.required and flag.name not in seen:
            raise CommandError(f"missing --{flag.name} {flag.metavar}: {flag.help}")
    for group in spec.exclusive:
        chosen = [n for n in group if n in seen]
        if len(chosen) > 1:
            raise CommandError(" and ".join(f"--{n}" for n in chosen) + " cannot be used together")
    for pos in spec.positionals:
        if pos.greedy:
            raw = " ".join(free)
            free = []
            if not raw:
                if pos.required:
                    raise CommandError(f"missing {pos.name.upper()}: {pos.help}")
                continue
        elif free:
            raw = free.pop(0)
        else:
            if pos.required:
                raise CommandError(f"missing {pos.name.upper()}: {pos.help}")
            continue
        values[pos.name] = _convert(pos.parse, raw, ctx, pos.name.upper())
    if free:
        raise CommandError(f"unexpected {' '.join(repr(f) for f in free[:3])}", hint=_quote_hint(free, strays))
    return spec.target(**values)


def _quote_hint(free: list[str], strays: dict[str, list[str]]) -> str | None:
    """When the unexpected words followed a text option, show the option with its words quoted."""
    for name, words in strays.items():
        if len(words) > 1 and free[0] in words[1:]:
            quoted = " ".join(words).replace('"', "'")
            return f'Text with spaces needs quotes: `--{name} "{user_text(quoted)}"`'
    return None


def _convert(parse: ValueParser, raw: str, ctx: ParseContext, what: str) -> Any:
    try:
        return parse(raw, ctx)
    except CommandError:
        raise
    except ValueError as exc:
        raise CommandError(f"{what}: {exc}") from None


def _suggest(name: str, flags: dict[str, Flag]) -> str | None:
    import difflib

    close = difflib.get_close_matches(name, list(flags), n=1)
    if close:
        return f"Did you mean --{close[0]}?"
    if flags:
        return "Options: " + ", ".join(f"--{n}" for n in flags) + ", --help"
    return "This command takes no options besides --help."
