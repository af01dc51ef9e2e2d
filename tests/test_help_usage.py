"""Help and usage that match behaviour, through the real bot (issue 6, item 13)."""

# ruff: noqa: F811  - fixtures imported from tests/test_deploy_support.py are test parameters here

from __future__ import annotations

from tests.test_deploy_support import (  # noqa: F401  (fixtures)
    Deployer,
    config_path,
    deployer,
    fake_slack,
    sqlite_url,
)


def test_help_deploy_shows_the_configured_canary_steps(deployer: Deployer) -> None:
    """/help deploy and /deploy --help quote this config's canary steps (50 → 100 here), not a fixed list."""
    for command, text in (("/help", "deploy"), ("/deploy", "--help")):
        reply = deployer.command(command, text)
        assert "Canary steps: staging 50% → 100%; production 50% → 100%" in reply, command
        assert "10/25/50/75/100" not in reply


def test_bare_version_is_refused_not_deployed(deployer: Deployer) -> None:
    """`/deploy 2.3` no longer starts v2.3 at once: it is refused with a did-you-mean, like `V2.3`."""
    for typed in ("2.3", "V2.3"):
        reply = deployer.command("/deploy", f"{typed} --env staging")
        assert f"'{typed}' is not a release tag" in reply and "Did you mean `v2.3`?" in reply
    deployer.bot.settle()
    assert deployer.audit("deploy.plan") == []


def test_unquoted_reason_is_refused_with_a_hint_to_quote(deployer: Deployer) -> None:
    """An unquoted multi-word --reason names the stray word and shows the quoted form."""
    reply = deployer.command("/lock", "staging --reason fenêtre de maintenance")
    assert "unexpected 'de' 'maintenance'" in reply
    assert 'Text with spaces needs quotes: `--reason "fenêtre de maintenance"`' in reply
