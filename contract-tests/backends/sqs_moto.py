"""Contract-suite fixture of flowcraft-sqs on moto server (``--backend sqs-moto``): SQS and
DynamoDB in one Python process. Not in CI (the emulators' profile, ``--backend sqs``, is):
moto enforces limits ElasticMQ does not (SQS's 12-hour visibility cap among them), so this
profile checks that the backend keeps to AWS's rules. Its gaps are listed in docs/sqs.md.
"""

from __future__ import annotations

from backends.sqs import Fixture as SqsFixture

__all__ = ["Fixture"]


class Fixture(SqsFixture):
    """The SQS fixture on moto server."""

    name = "sqs-moto"
    profile = "moto"
    # moto server keeps its state in memory only: no restart can keep its data, so the
    # server-restart test skips (the gap is moto's, not AWS's).
    restartable = None  # type: ignore[assignment]
