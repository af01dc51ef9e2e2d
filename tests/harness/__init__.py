"""Reusable test harness for swarm-chatops.

Modules:

* :mod:`tests.harness.slack_api` -- ``FakeSlack``, a fake Slack Web API served over real sockets.
* :mod:`tests.harness.signing` -- build correctly signed slash-command, interactivity and Events API requests.
* :mod:`tests.harness.postgres` -- a throwaway PostgreSQL cluster for integration tests.

Submodules are imported explicitly (``from tests.harness.slack_api import FakeSlack``) so that importing the
package never pulls in optional dependencies.
"""
