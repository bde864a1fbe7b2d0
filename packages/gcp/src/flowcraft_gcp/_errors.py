"""Google client errors translated into Flowcraft's, where they occur."""

from __future__ import annotations

from google.api_core import exceptions as google_errors

from flowcraft.backend import translate_errors

__all__ = ["firestore_errors", "pubsub_errors"]

_RETRYABLE: tuple[type[BaseException], ...] = (
    google_errors.ServiceUnavailable,
    google_errors.DeadlineExceeded,
    google_errors.RetryError,
    ConnectionError,
)
"""Failures after which a reconnect and retry can succeed (the server is down or restarting)."""

pubsub_errors = translate_errors("pubsub", _RETRYABLE, (google_errors.GoogleAPIError,))
firestore_errors = translate_errors("firestore", _RETRYABLE, (google_errors.GoogleAPIError,))
