"""Retries of obstore requests, made by gpuzarr rather than inside obstore's runtime, so a read's
ReadReport counts every retry, those of requests that finally succeeded too (obstore 0.12 says
nothing of them), and so a read that ended (its deadline passed, another request failed) starts
no new attempt.

The policy is obstore's `retry_config` (max_retries, retry_timeout, backoff: init_backoff,
max_backoff, base), applied as `object_store` applies it: decorrelated jitter, each wait drawn
between the first wait and `base` times the last, capped; no attempt starts later than
`retry_timeout` after the first. Retried: 5xx, 408 and 429 answers, and transport failures
(connect errors, resets, timeouts, bodies cut short), which obstore raises as GenericError with
no status. Anything else (404, 403, 416, a refused ranged answer) is the caller's to read.

The same policy retries the GETs of fsspec's HTTP filesystem where it stands in for an obstore
HTTP client (a forked child's reads: see store_obstore), which retries nothing itself; its
failures are aiohttp's (`aiohttp_retryable`)."""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from .errors import SettingsError

T = TypeVar("T")

_STATUS = re.compile(r"status code: (\d{3})\b")
_URL = re.compile(r"\b\w+://\S+")
# transport failures as object_store words them ("Generic HTTP error" only names the store kind)
_TRANSPORT = re.compile(r"(?<!Generic )HTTP error|error sending request|body error|timed out|connection", re.IGNORECASE)


def _seconds(value: Any, default: float) -> float:
    """A duration as obstore takes it (a timedelta; it refuses numbers and strings too)."""
    if value is None:
        return default
    if not isinstance(value, timedelta) or value < timedelta(0):
        raise SettingsError(f"storage_options retry_config: a duration must be a datetime.timedelta >= 0, "
                            f"not {value!r}")
    return value.total_seconds()


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 10
    retry_timeout: float = 180.0  # seconds; object_store's defaults
    init_backoff: float = 0.1
    max_backoff: float = 15.0
    base: float = 2.0

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> RetryPolicy:
        """The policy of an obstore `retry_config` (unset keys take object_store's defaults);
        checked here, as obstore would check it, since gpuzarr's client is given none."""
        backoff = dict(config.get("backoff") or {})
        policy = cls()
        retries = config.get("max_retries", policy.max_retries)
        base = backoff.get("base", policy.base)
        if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
            raise SettingsError(f"storage_options retry_config: max_retries must be an int >= 0, not {retries!r}")
        if not isinstance(base, (int, float)) or isinstance(base, bool) or not base >= 1:
            raise SettingsError(f"storage_options retry_config: backoff base must be a number >= 1, not {base!r}")
        return cls(max_retries=retries,
                   retry_timeout=_seconds(config.get("retry_timeout"), policy.retry_timeout),
                   init_backoff=_seconds(backoff.get("init_backoff"), policy.init_backoff),
                   max_backoff=_seconds(backoff.get("max_backoff"), policy.max_backoff),
                   base=float(base))

    def next_wait(self, last: float) -> float:
        """The wait before the next attempt, the last wait being `last` (0 before the first retry)."""
        if last <= 0:
            return min(self.init_backoff, self.max_backoff)
        return min(self.max_backoff, random.uniform(self.init_backoff, max(self.init_backoff, last * self.base)))


def retryable(exc: BaseException) -> bool:
    """Whether an obstore error is one a new attempt may cure."""
    from obstore.exceptions import GenericError

    if not isinstance(exc, GenericError):  # not found, permission denied, bad path, unsupported ...
        return False
    text = str(exc)
    status = _STATUS.search(text)
    if status:
        code = int(status.group(1))
        return code >= 500 or code in (408, 429)
    return _TRANSPORT.search(_URL.sub("", text)) is not None  # (not a word of the object's URL)


def with_retries(policy: RetryPolicy, request: Callable[[], T], ended: threading.Event,
                 retried: Callable[[], None]) -> T:
    """request(), attempted again on a retryable failure while the policy allows and the read has
    not `ended`; `retried()` is called once per new attempt. The last failure is raised."""
    first = time.monotonic()
    wait = 0.0
    retries = 0
    while True:
        try:
            return request()
        except Exception as exc:
            if retries >= policy.max_retries or not retryable(exc):
                raise
            wait = policy.next_wait(wait)
            if time.monotonic() + wait - first > policy.retry_timeout or ended.wait(wait):
                raise
            retries += 1
            retried()


def aiohttp_retryable(exc: BaseException) -> bool:
    """Whether an aiohttp failure (fsspec's HTTP filesystem) is one a new attempt may cure: the
    same answers and transport failures as `retryable`."""
    try:
        import aiohttp
    except ImportError:
        return False
    if isinstance(exc, aiohttp.ClientResponseError):
        return exc.status >= 500 or exc.status in (408, 429)
    return isinstance(exc, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError, ConnectionError))


def retry_failed(policy: RetryPolicy, read: Callable[[list[int]], list], n: int,
                 retryable: Callable[[BaseException], bool], retried: Callable[[int], None],
                 deadline: float | None = None) -> tuple[list, list[int]]:
    """read(items) for items 0..n-1 (a result per item, an exception where it failed), the items
    that failed retryably read again, together, while the policy allows and before `deadline`
    (time.monotonic()); retried(k) per round of k new attempts. Returns the results and the
    attempts made per item."""
    results = read(list(range(n)))
    attempts = [1] * n
    first = time.monotonic()
    wait = 0.0
    for _ in range(policy.max_retries):
        again = [i for i, r in enumerate(results) if isinstance(r, BaseException) and retryable(r)]
        if not again:
            break
        wait = policy.next_wait(wait)
        start = time.monotonic() + wait
        if start - first > policy.retry_timeout or (deadline is not None and start >= deadline):
            break
        time.sleep(wait)
        retried(len(again))
        for i, result in zip(again, read(again)):
            results[i] = result
            attempts[i] += 1
    return results, attempts
