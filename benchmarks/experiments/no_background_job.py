"""A/B experiment, not product code: `chatops serve` with background jobs dropped.

Shows what the ack path alone costs. TaskRunner.submit returns a finished future without
running the job, so no audit record or idempotency key is written.

    .venv/bin/python benchmarks/ack_latency.py --bot-wrapper benchmarks/experiments/no_background_job.py
"""

import sys
from concurrent.futures import Future

from bot import tasks


def submit(self, name, fn):  # noqa: ANN001, ANN201 - same signature as TaskRunner.submit
    done: Future[None] = Future()
    done.set_result(None)
    return done


tasks.TaskRunner.submit = submit  # type: ignore[method-assign]

from bot.cli import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
