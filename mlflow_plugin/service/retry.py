"""Which errors are worth another try, and trying again with backoff.

Transient: the network (connection refused or reset, timeouts), the server or the artifact store
answering 5xx or TEMPORARILY_UNAVAILABLE, a locked sqlite database, an I/O error while copying
artifacts. Everything else (a missing model, corrupt weights, a refused pickle, a policy error) is
permanent: retrying cannot change it, so it is recorded at once.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

_logger = logging.getLogger(__name__)
T = TypeVar("T")
_TRANSIENT_CODES = {"TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "DEADLINE_EXCEEDED"}
_TRANSIENT_TEXT = ("database is locked", "connection refused", "connection reset", "server closed the connection",
                   "temporarily unavailable", "timed out", "max retries exceeded", "too many 500 error responses",
                   "too many 502 error responses", "too many 503 error responses", "too many 504 error responses")


def error_chain(err: BaseException) -> Iterator[BaseException]:
    """``err`` and the errors it was raised from (MLflow wraps requests' errors in its own)."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def is_transient(err: BaseException) -> bool:
    import requests
    from mlflow.exceptions import MlflowException, RestException

    for link in error_chain(err):
        if isinstance(link, (requests.ConnectionError, requests.Timeout, ConnectionError, TimeoutError)):
            return True
        if isinstance(link, RestException) and link.get_http_status_code() >= 500:
            return True
        if isinstance(link, MlflowException) and link.error_code in _TRANSIENT_CODES:
            return True
        if isinstance(link, OSError) and not isinstance(link, (FileNotFoundError, PermissionError)) \
                and link.errno is not None:
            return True  # an I/O error while reading or writing artifacts (disk, NFS, a dropped socket)
        if any(text in str(link).lower() for text in _TRANSIENT_TEXT):
            return True
    return False


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` tries in all, waiting ``base_seconds`` x 2^k (capped, +-25% jitter) between them."""

    attempts: int = 5
    base_seconds: float = 2.0
    max_seconds: float = 60.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.base_seconds < 0 or self.max_seconds < 0:
            raise ValueError(f"a retry policy needs attempts >= 1 and delays >= 0, not {self}")

    def delay(self, failed_attempts: int) -> float:
        raw = min(self.max_seconds, self.base_seconds * 2 ** (failed_attempts - 1))
        return raw * random.uniform(0.75, 1.25)


class RetriesExhausted(RuntimeError):
    """A transient error persisted through every attempt; ``__cause__`` is the last one."""

    def __init__(self, what: str, attempts: int, last: BaseException) -> None:
        super().__init__(f"{what}: still failing after {attempts} attempts: {type(last).__name__}: {last}")
        self.attempts = attempts


def with_retries(what: str, action: Callable[[], T], policy: RetryPolicy,
                 sleep: Callable[[float], None] = time.sleep) -> tuple[T, int]:
    """Run ``action``; on a transient error wait and try again. Returns (result, attempts used).

    Permanent errors propagate at once; transient ones that outlast the policy raise
    :class:`RetriesExhausted`.
    """
    for attempt in range(1, policy.attempts + 1):
        try:
            return action(), attempt
        except Exception as err:  # classified below: permanent errors are re-raised unchanged
            if not is_transient(err):
                raise
            if attempt == policy.attempts:
                raise RetriesExhausted(what, attempt, err) from err
            wait = policy.delay(attempt)
            _logger.warning("%s: transient error (attempt %d of %d), retrying in %.1f s: %s: %s", what, attempt,
                            policy.attempts, wait, type(err).__name__, err,
                            extra={"fields": {"event": "retry", "what": what, "attempt": attempt,
                                              "error": f"{type(err).__name__}: {err}"[:500]}})
            sleep(wait)
    raise AssertionError("unreachable: the loop returns or raises")
