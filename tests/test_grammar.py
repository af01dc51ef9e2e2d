"""The command grammar: `/deploy`, `/help`, `/status` and `/audit` text -> typed commands or CommandError."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.config import Config, load_config
from bot.errors import CommandError, UnknownEnvironment
from commands import audit, deploy, help, registry, status
from commands.deploy import Deploy
from commands.grammar import MAX_INPUT, CommandSpec, HelpRequest, ParseContext, parse_args

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_CONFIG = REPO / "chatops.example.yml"


@pytest.fixture(scope="module")
def example_config() -> Config:
    return load_config(EXAMPLE_CONFIG)


@pytest.fixture(scope="module")
def parse_ctx(example_config: Config) -> ParseContext:
    return ParseContext(example_config)


def parse_deploy(text: str, ctx: ParseContext) -> Any:
    return parse_args(deploy.SPEC, text, ctx)


def deploy_error(text: str, ctx: ParseContext) -> CommandError:
    with pytest.raises(CommandError) as info:
        parse_deploy(text, ctx)
    return info.value


# --- /deploy: what parses ------------------------------------------------------------------------
def test_deploy_with_env_and_canary_parses_into_deploy(parse_ctx: ParseContext) -> None:
    """`v2.3 --env production --canary` becomes a Deploy with those values and the rest defaulted."""
    parsed = parse_deploy("v2.3 --env production --canary", parse_ctx)
    assert parsed == Deploy(version="v2.3", env="production", canary=True, blue_green=False, dry_run=False,
                            reason=None)
    assert parsed.strategy == "canary"


@pytest.mark.parametrize("typed", ["2.3", "V2.3"])
def test_almost_a_tag_is_refused_with_the_tag_it_probably_means(parse_ctx: ParseContext, typed: str) -> None:
    """`2.3` and `V2.3` are treated alike: refused (never silently deployed) with "did you mean `v2.3`"."""
    err = deploy_error(typed, parse_ctx)
    assert f"'{typed}' is not a release tag" in err.message
    assert err.hint == "Did you mean `v2.3`?" and err.usage == deploy.SPEC.usage


def test_release_candidate_version_is_accepted(parse_ctx: ParseContext) -> None:
    """A three-part version with a pre-release suffix keeps its suffix."""
    assert parse_deploy("v2.3.1-rc.1", parse_ctx).version == "v2.3.1-rc.1"


def test_flag_value_can_be_joined_with_equals(parse_ctx: ParseContext) -> None:
    """`--env=production` is the same as `--env production`."""
    assert parse_deploy("v2.3 --env=production", parse_ctx).env == "production"


def test_flags_may_come_before_the_version(parse_ctx: ParseContext) -> None:
    """Options and the positional VERSION can be given in any order."""
    assert parse_deploy("--blue-green --env staging v2.3", parse_ctx) == Deploy(
        version="v2.3", env="staging", blue_green=True)


def test_quoted_reason_keeps_its_words_together(parse_ctx: ParseContext) -> None:
    """`--reason "two words"` gives one value with the space inside."""
    assert parse_deploy('v2.3 --reason "two words"', parse_ctx).reason == "two words"


def test_slack_smart_double_quotes_work_like_plain_quotes(parse_ctx: ParseContext) -> None:
    """Slack's curly “quotes” group words just like straight ones."""
    assert parse_deploy("v2.3 --reason \u201cfix the fills\u201d", parse_ctx).reason == "fix the fills"


def test_slack_smart_single_quotes_work_like_plain_quotes(parse_ctx: ParseContext) -> None:
    """Slack's curly ‘single quotes’ group words too."""
    assert parse_deploy("v2.3 --reason \u2018hot fix\u2019", parse_ctx).reason == "hot fix"


def test_non_breaking_space_separates_words(parse_ctx: ParseContext) -> None:
    """A non-breaking space pasted from a document is an ordinary separator."""
    assert parse_deploy("v2.3\u00a0--canary", parse_ctx).canary is True


def test_quoted_equals_value_keeps_spaces(parse_ctx: ParseContext) -> None:
    """`--reason="a b"` keeps the quoted words as one value."""
    assert parse_deploy('v2.3 --reason="a b"', parse_ctx).reason == "a b"


def test_deploy_without_options_leaves_every_option_at_its_default(parse_ctx: ParseContext) -> None:
    """A bare version names no environment and picks no strategy (the workflow decides later)."""
    assert parse_deploy("v2.3", parse_ctx) == Deploy(version="v2.3")


# --- /deploy: --help -------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["--help", "v2.3 --help", "v2.3 --env production --help", "-h", "help",
                                  "v2.3 --env moon --help", "--bogus --help"])
def test_help_anywhere_gives_a_help_request(parse_ctx: ParseContext, text: str) -> None:
    """`--help` (or `-h`, or a leading `help`) wins over everything else on the line."""
    assert parse_deploy(text, parse_ctx) == HelpRequest(deploy.SPEC)


def test_help_text_lists_every_flag_and_the_usage() -> None:
    """The full help shows the usage line and documents each option."""
    text = deploy.SPEC.help_text()
    assert f"Usage: `{deploy.SPEC.usage}`" in text
    for flag in ("--env ENV", "--canary", "--blue-green", "--dry-run", "--reason TEXT", "--help"):
        assert f"`{flag}`" in text


def test_usage_shows_exclusive_strategies_as_alternatives() -> None:
    """The usage line renders --canary and --blue-green as one either/or group."""
    assert deploy.SPEC.usage.startswith("/deploy VERSION [--canary | --blue-green]")


# --- /deploy: errors ------------------------------------------------------------------------------
def test_unknown_flag_suggests_the_closest_option(parse_ctx: ParseContext) -> None:
    """A misspelt option is named, with a did-you-mean hint and the usage."""
    err = deploy_error("v2.3 --evn production", parse_ctx)
    assert err.message == "unknown option --evn"
    assert err.hint == "Did you mean --env?"
    assert err.usage == deploy.SPEC.usage


def test_unknown_flag_without_a_close_match_lists_the_options(parse_ctx: ParseContext) -> None:
    """An option nothing like the real ones gets the list of options instead."""
    err = deploy_error("v2.3 --zzzzzz", parse_ctx)
    assert err.hint is not None and "--env" in err.hint and "--canary" in err.hint


def test_single_dash_option_is_refused(parse_ctx: ParseContext) -> None:
    """`-e production` is an error that explains options start with --."""
    err = deploy_error("v2.3 -e production", parse_ctx)
    assert "unknown option -e" in err.message and "--" in err.message


@pytest.mark.parametrize("version", ["latest", "v2", "2.3.4.5", "v2.3-", "vv2.3", "2.3 beta"])
def test_malformed_version_is_named(parse_ctx: ParseContext, version: str) -> None:
    """Something that is not a release tag is rejected, saying what a version looks like."""
    err = deploy_error(f'"{version}"', parse_ctx)
    assert err.message.startswith("VERSION: ")
    assert repr(version) in err.message and "v2.3" in err.message
    assert err.usage == deploy.SPEC.usage


@pytest.mark.parametrize("version", ["\uff12.\uff13", "\u0662.\u0663"])  # fullwidth 2.3, Arabic-Indic 2.3
def test_version_with_non_ascii_digits_is_rejected(parse_ctx: ParseContext, version: str) -> None:
    """Fullwidth or Arabic-Indic digits are not an image tag and must not pass as a version."""
    with pytest.raises(CommandError):
        parse_deploy(version, parse_ctx)


def test_unknown_environment_lists_the_known_ones(parse_ctx: ParseContext) -> None:
    """`--env moon` raises UnknownEnvironment naming it and listing the configured environments."""
    with pytest.raises(UnknownEnvironment) as info:
        parse_deploy("v2.3 --env moon", parse_ctx)
    assert "'moon'" in info.value.message
    assert info.value.hint == "Known environments: production, staging."
    assert info.value.usage == deploy.SPEC.usage


def test_missing_version_is_named(parse_ctx: ParseContext) -> None:
    """Without VERSION the error names the missing argument and what it is."""
    err = deploy_error("--env staging", parse_ctx)
    assert err.message == "missing VERSION: the release tag, e.g. v2.3"
    assert err.usage == deploy.SPEC.usage


def test_empty_line_is_a_missing_version(parse_ctx: ParseContext) -> None:
    """A bare `/deploy` asks for the version."""
    assert deploy_error("", parse_ctx).message.startswith("missing VERSION")


@pytest.mark.parametrize("text", ["v2.3 --env", "v2.3 --env --canary"])
def test_flag_missing_its_value_is_named(parse_ctx: ParseContext, text: str) -> None:
    """`--env` at the end, or followed by another option, needs a value."""
    err = deploy_error(text, parse_ctx)
    assert err.message == "--env needs a value (ENV)"


def test_empty_reason_is_refused(parse_ctx: ParseContext) -> None:
    """`--reason ""` is not a reason."""
    err = deploy_error('v2.3 --reason ""', parse_ctx)
    assert err.message == "--reason: must not be empty"


def test_switch_given_a_value_is_refused(parse_ctx: ParseContext) -> None:
    """`--canary=yes` says the switch takes no value."""
    assert deploy_error("v2.3 --canary=yes", parse_ctx).message == "--canary takes no value"


@pytest.mark.parametrize("text", ["v2.3 --env staging --env production", "v2.3 --canary --canary"])
def test_duplicated_flag_is_refused(parse_ctx: ParseContext, text: str) -> None:
    """Giving the same option twice is an error naming that option."""
    err = deploy_error(text, parse_ctx)
    assert err.message.endswith("was given twice")
    assert err.message.split()[0] in text


def test_canary_and_blue_green_are_exclusive(parse_ctx: ParseContext) -> None:
    """Two strategies at once name both options."""
    err = deploy_error("v2.3 --canary --blue-green", parse_ctx)
    assert err.message == "--canary and --blue-green cannot be used together"
    assert err.usage == deploy.SPEC.usage


@pytest.mark.parametrize(("text", "quote"), [('v2.3 --reason "oops', '"'), ("v2.3 --reason 'oops", "'"),
                                             ("v2.3 --reason \u201coops", '"')])
def test_unbalanced_quote_is_named(parse_ctx: ParseContext, text: str, quote: str) -> None:
    """An unclosed quote (straight or smart) is reported with the usage."""
    err = deploy_error(text, parse_ctx)
    assert err.message == f"unbalanced {quote} quote"
    assert err.usage == deploy.SPEC.usage


def test_extra_words_are_named(parse_ctx: ParseContext) -> None:
    """Words nobody asked for are quoted back in the error."""
    err = deploy_error("v2.3 now please", parse_ctx)
    assert err.message == "unexpected 'now' 'please'"
    assert err.usage == deploy.SPEC.usage


def test_overlong_input_is_refused_before_parsing(parse_ctx: ParseContext) -> None:
    """More than MAX_INPUT characters is refused with the length in the message."""
    text = "v2.3 --reason " + "x" * MAX_INPUT
    err = deploy_error(text, parse_ctx)
    assert err.message == f"the command is too long ({len(text)} characters, at most {MAX_INPUT})"


def test_error_user_text_carries_message_usage_and_hint(parse_ctx: ParseContext) -> None:
    """What the user sees has the problem, the usage line and the hint, in that order."""
    text = deploy_error("v2.3 --evn production", parse_ctx).user_text()
    assert text.splitlines() == [":warning: unknown option --evn", f"Usage: `{deploy.SPEC.usage}`",
                                 "Did you mean --env?"]


# --- the other commands ---------------------------------------------------------------------------
def test_status_with_env_parses(parse_ctx: ParseContext) -> None:
    """`/status --env production` selects that environment."""
    assert parse_args(status.SPEC, "--env production", parse_ctx) == status.Status(env="production")


def test_help_with_command_name_is_normalised(parse_ctx: ParseContext) -> None:
    """`/help /Deploy` asks about the deploy command."""
    assert parse_args(help.SPEC, "/Deploy", parse_ctx) == help.Help(command="deploy")


def test_audit_actor_name_becomes_user_id(parse_ctx: ParseContext) -> None:
    """`--actor alice` is resolved to alice's Slack user id from the config."""
    assert parse_args(audit.SPEC, "--actor alice", parse_ctx).actor == "U0ALICE01"


def test_audit_actor_mention_becomes_user_id(parse_ctx: ParseContext) -> None:
    """A Slack mention `<@U123|name>` is read as that user id."""
    assert parse_args(audit.SPEC, "--actor <@U0BOB0002|bob>", parse_ctx).actor == "U0BOB0002"


def test_audit_unknown_actor_is_named(parse_ctx: ParseContext) -> None:
    """A name that is not in the config is refused, naming the option."""
    with pytest.raises(CommandError) as info:
        parse_args(audit.SPEC, "--actor mallory", parse_ctx)
    assert info.value.message.startswith("--actor: 'mallory' is not a known person")


def test_audit_since_date_becomes_utc_iso(parse_ctx: ParseContext) -> None:
    """A plain date is read as midnight UTC."""
    assert parse_args(audit.SPEC, "--since 2026-11-27", parse_ctx).since == "2026-11-27T00:00:00.000000Z"


def test_audit_since_with_offset_is_converted_to_utc(parse_ctx: ParseContext) -> None:
    """A time with a zone offset is converted to UTC."""
    parsed = parse_args(audit.SPEC, "--since 2026-11-27T10:00+02:00", parse_ctx)
    assert parsed.since == "2026-11-27T08:00:00.000000Z"


@pytest.mark.parametrize("limit", ["0", "51", "ten"])
def test_audit_limit_out_of_range_is_refused(parse_ctx: ParseContext, limit: str) -> None:
    """`--limit` must be a whole number from 1 to 50."""
    with pytest.raises(CommandError) as info:
        parse_args(audit.SPEC, f"--limit {limit}", parse_ctx)
    assert info.value.message.startswith("--limit: ")


def test_status_takes_no_positional_words(parse_ctx: ParseContext) -> None:
    """`/status production` (forgetting --env) says the word was unexpected."""
    with pytest.raises(CommandError) as info:
        parse_args(status.SPEC, "production", parse_ctx)
    assert info.value.message == "unexpected 'production'"
    assert info.value.usage == status.SPEC.usage


@pytest.mark.parametrize("when", ["0001-01-01T00:00+01:00", "9999-12-31T23:59-01:00"])
def test_audit_time_out_of_range_names_the_option(parse_ctx: ParseContext, when: str) -> None:
    """A time that cannot be expressed in UTC is a --since error, not an internal crash."""
    with pytest.raises(CommandError) as info:
        parse_args(audit.SPEC, f"--since {when}", parse_ctx)
    assert info.value.message.startswith("--since: ")


# --- property: nothing but the target, a HelpRequest or a CommandError -------------------------------
def all_specs() -> list[CommandSpec]:
    commands, _actions = registry.build()
    return [entry.spec for entry in commands.values()] + [deploy.SPEC]


FRAGMENTS = ["--env", "production", "staging", "moon", "v2.3", "2.3", '"', "'", "\u201c", "\u201d", "\u2019",
             "--", "-", "=", "--canary", "--blue-green", "--dry-run", "--reason", "--help", "-h", "help",
             "--actor", "alice", "<@U0ALICE01>", "--since", "--until", "24h", "2026-11-27", "--limit", "5",
             "-5", "--action", "command.", "deploy", "/status", " ", "\t", "\u00a0", "x" * 30]
token_text = st.lists(st.sampled_from(FRAGMENTS), max_size=14).map(" ".join)
glued_text = st.lists(st.sampled_from(FRAGMENTS), max_size=14).map("".join)
any_text = st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from('"\'-=\u201c\u201d\u2018\u2019 '),
                   max_size=200)


def check_parse_contract(spec: CommandSpec, text: str, ctx: ParseContext) -> None:
    try:
        result = parse_args(spec, text, ctx)
    except CommandError as exc:
        assert exc.usage == spec.usage
        assert exc.message
        # the catch-all in parse_args is a safety net: no input should need it
        assert not exc.message.startswith("could not read the command"), exc.__cause__
        return
    if isinstance(result, HelpRequest):
        assert result.spec is spec
    else:
        assert type(result) is spec.target


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=st.sampled_from(all_specs()), text=any_text)
def test_arbitrary_text_parses_or_raises_command_error(example_config: Config, spec: CommandSpec,
                                                       text: str) -> None:
    """Any Unicode text yields the spec's target, a HelpRequest, or a CommandError with usage."""
    check_parse_contract(spec, text, ParseContext(example_config))


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=st.sampled_from(all_specs()), text=token_text | glued_text)
def test_token_soup_parses_or_raises_command_error(example_config: Config, spec: CommandSpec,
                                                   text: str) -> None:
    """Lines built from real option names, values, quotes and dashes never escape the contract."""
    check_parse_contract(spec, text, ParseContext(example_config))


def test_property_covers_every_registered_command() -> None:
    """The property tests above reach every command in the registry and /deploy."""
    assert {"help", "status", "audit", "deploy"} <= {spec.name for spec in all_specs()}


# --- what is typed is quoted back safely ---------------------------------------------------------
def test_error_quoting_input_escapes_slack_markup(parse_ctx: ParseContext) -> None:
    """An unknown environment named `<!channel>` is quoted back escaped, never as a broadcast."""
    with pytest.raises(UnknownEnvironment) as info:
        parse_args(status.SPEC, "--env <!channel>", parse_ctx)
    assert "<!channel>" not in info.value.user_text()
    assert "unknown environment '&lt;!channel&gt;'" in info.value.message


def test_error_quoting_input_redacts_a_pasted_token(parse_ctx: ParseContext) -> None:
    """A token pasted where a version belongs is not echoed back."""
    token = "xoxb-1234567890-abcdefghij"
    err = deploy_error(token, parse_ctx)
    assert token not in err.user_text() and "***" in err.message


# --- numbers in range, or a usage error ------------------------------------------------------------
@pytest.mark.parametrize("hours", ["1e-300", "0", "0.01", "169", "1e3", "inf", "nan", "1_0", "-1", "\u0664"])
def test_lock_hours_outside_what_is_accepted_is_a_usage_error(parse_ctx: ParseContext, hours: str) -> None:
    """`--hours` takes a plain number from 0.1 to 168; anything else says exactly that."""
    with pytest.raises(CommandError) as info:
        parse_args(deploy.LOCK_SPEC, f"production --reason x --hours {hours}", parse_ctx)
    assert "--hours" in info.value.message
    assert "from 0.1 (6 minutes) to 168 (a week)" in info.value.message


@pytest.mark.parametrize(("hours", "value"), [("0.1", 0.1), (".5", 0.5), ("4", 4.0), ("168", 168.0)])
def test_lock_hours_inside_the_range_parse(parse_ctx: ParseContext, hours: str, value: float) -> None:
    """The ends of the accepted range and short forms parse to that many hours."""
    assert parse_args(deploy.LOCK_SPEC, f"production --reason x --hours {hours}", parse_ctx).hours == value


@pytest.mark.parametrize("value", [10**20, 1e20, True, -1, "3", None])
def test_button_numbers_outside_their_range_are_refused(value: Any) -> None:
    """A button's number that is not a small whole number is a ValueError, before any query."""
    from commands.grammar import bounded_int

    with pytest.raises(ValueError, match="malformed button"):
        bounded_int(value, 0, 1000, "checklist step")


def test_limit_out_of_range_says_what_is_accepted(parse_ctx: ParseContext) -> None:
    """`--limit 0` names the accepted range as whole numbers from 1 to 50."""
    with pytest.raises(CommandError) as info:
        parse_args(audit.SPEC, "--limit 0", parse_ctx)
    assert "must be a whole number from 1 to 50" in info.value.message


# --- help and usage say what the parser does --------------------------------------------------------
def test_lock_usage_shows_reason_as_required(parse_ctx: ParseContext) -> None:
    """`/lock`'s usage shows --reason without brackets, and parsing without it names it."""
    assert deploy.LOCK_SPEC.usage == "/lock ENV --reason TEXT [--hours N]"
    with pytest.raises(CommandError) as info:
        parse_args(deploy.LOCK_SPEC, "production --hours 2", parse_ctx)
    assert info.value.message.startswith("missing --reason TEXT")


def test_unquoted_multiword_reason_gets_a_hint_to_quote(parse_ctx: ParseContext) -> None:
    """`--reason hotfix déploiement urgent` says to quote it, showing the option with its words quoted."""
    err = deploy_error("v2.3 --reason hotfix déploiement urgent", parse_ctx)
    assert "unexpected 'déploiement' 'urgent'" in err.message
    assert err.hint == 'Text with spaces needs quotes: `--reason "hotfix déploiement urgent"`'


def test_stray_word_not_after_a_text_option_gets_no_quote_hint(parse_ctx: ParseContext) -> None:
    """A stray word elsewhere is just unexpected: no hint about quoting."""
    err = deploy_error("v2.3 extra --reason x", parse_ctx)
    assert "unexpected 'extra'" in err.message and err.hint is None


def test_deploy_help_lists_each_environments_configured_canary_steps(parse_ctx: ParseContext,
                                                                     example_config: Config) -> None:
    """`/deploy --help` quotes the canary steps of the config, not a fixed list."""
    parsed = parse_deploy("--help", parse_ctx)
    text = parsed.help_text()
    for name, env in example_config.environments.items():
        assert f"{name} " + " → ".join(f"{w}%" for w in env.canary.steps) in text
    assert "10/25/50/75/100" not in text

