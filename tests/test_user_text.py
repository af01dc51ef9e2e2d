"""What people type is shown escaped and redacted wherever the bot shows it (issue 6, item 4).

Driven through the real bot and a FakeSlack: the channel posts, the run's message, replies and
/status and /audit listings must carry no `<!channel>`, no disguised `<https://…|…>` link and no
pasted token — only their escaped, redacted form.
"""

# ruff: noqa: F811  - fixtures imported from tests/test_deploy_support.py are test parameters here

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from bot.blocks import user_text
from bot.core.redact import redact_text
from bot.render import mrkdwn
from tests.test_deploy_support import (  # noqa: F401  (fixtures)
    ALICE,
    ROOT,
    STAGING_DEPLOY,
    Deployer,
    blocks_text,
    config_path,
    deployer,
    fake_slack,
    sqlite_url,
)

TOKEN = "xoxb-1234567890-0987654321-AbCdEfGhIjKl"
EVIL = f"<!channel> <https://evil.example/login|Re-authenticate here> & {TOKEN}"
LINK = re.compile(r"<https?://[^>]*\|")


def assert_safe(text: str) -> None:
    """No broadcast, no disguised link, no token; the text is shown escaped instead."""
    assert "<!channel>" not in text and not LINK.search(text) and TOKEN not in text
    assert "&lt;!channel&gt; &lt;https://evil.example/login|Re-authenticate here&gt; &amp; ***" in text


def test_user_text_redacts_then_escapes() -> None:
    """The one function: secrets become ***, then & < > become entities (in that order)."""
    assert user_text(EVIL) == ("&lt;!channel&gt; &lt;https://evil.example/login|Re-authenticate here&gt; "
                               "&amp; ***")


@given(st.text(alphabet=st.sampled_from(list("<>&|!@#:/.;amplgt xyzUC0123")), max_size=40))
def test_console_shows_escaped_text_as_it_was_typed(typed: str) -> None:
    """The console turns escaped user text back into exactly what was typed (redacted), never into a
    mention, channel or link, and never double-unescaped."""
    assert mrkdwn(user_text(typed)) == redact_text(typed)


def test_lock_reason_is_posted_to_the_channel_escaped_and_redacted(deployer: Deployer) -> None:
    """/lock's announcement in the deploy channel shows the reason as text, not markup."""
    reply = deployer.command("/lock", f'staging --reason "{EVIL}"')
    assert_safe(reply)
    [post] = [t for t in deployer.channel_texts(STAGING_DEPLOY) if t.startswith(":lock:")]
    assert_safe(post)


def test_lock_reason_is_escaped_where_the_freeze_is_quoted_back(deployer: Deployer) -> None:
    """/status, and a /deploy refused by the freeze, quote the reason escaped too."""
    deployer.command("/lock", f'staging --reason "{EVIL}"', ROOT)
    assert_safe(deployer.command("/status", "--env staging"))
    assert_safe(deployer.command("/deploy", "v2.3 --env staging"))


def test_deploy_reason_is_shown_escaped_in_the_plan(deployer: Deployer) -> None:
    """The run's message shows --reason escaped and redacted."""
    _reply, run_id = deployer.deploy(f'v2.3 --env staging --dry-run --reason "{EVIL}"')
    text = blocks_text(deployer.message(run_id))
    assert_safe(text)


def test_audit_listing_shows_typed_text_escaped(deployer: Deployer) -> None:
    """/audit's rows quote the typed command escaped (it was redacted when stored)."""
    deployer.command("/lock", f'staging --reason "{EVIL}"', ALICE)
    deployer.bot.settle()
    listing = deployer.command("/audit", "--action command.lock", ROOT)
    assert "<!channel>" not in listing and not LINK.search(listing) and TOKEN not in listing
    assert "&lt;!channel&gt;" in listing and "***" in listing


def test_a_token_in_a_reason_is_never_stored(deployer: Deployer) -> None:  # noqa: F811
    """The lock row and the run row keep the redacted reason, not the pasted token (only the audit log
    was redacted before)."""
    from sqlalchemy import select

    from bot.persistence.models import EnvLock, Run

    deployer.command("/lock", f"staging --reason 'oops {TOKEN}'", ALICE)
    with deployer.container.db.read() as session:
        lock = session.get(EnvLock, "staging")
        assert lock is not None and TOKEN not in (lock.reason or "") and "oops" in (lock.reason or "")
    deployer.command("/unlock", "staging", ALICE)
    deployer.deploy(f"v2.3 --env staging --dry-run --reason 'see {TOKEN}'")
    with deployer.container.db.read() as session:
        reasons = [r.reason or "" for r in session.execute(select(Run)).scalars()]
    assert reasons and all(TOKEN not in r and "see" in r for r in reasons)
