"""Per-key rate limit of `pneumoscan serve`: one token bucket per API key id.

Each key may make `per_minute` requests a minute: its bucket holds at most `per_minute` tokens (a whole
minute's allowance may come at once), refills at `per_minute / 60` tokens a second, and each request takes one.
A request finding less than one token is answered 429 with Retry-After, the whole seconds until a token is
back. Buckets are keyed by key id, after authentication, so their number is bounded by the number of keys:
unauthenticated clients cannot grow this table.
"""

import math
import time
from collections.abc import Callable


class RateLimiter:
    """Token buckets per key id; `per_minute` 0 turns the limit off."""

    def __init__(self, per_minute: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute, self.clock = per_minute, clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key id -> (tokens, when last refilled)

    @property
    def enabled(self) -> bool:
        return self.per_minute > 0

    def take(self, key_id: str) -> int | None:
        """Take one token for `key_id`: None if there was one, else the seconds to wait (Retry-After, >= 1)."""
        if not self.enabled:
            return None
        now = self.clock()
        rate = self.per_minute / 60.0
        tokens, since = self._buckets.get(key_id, (self.per_minute, now))
        tokens = min(self.per_minute, tokens + (now - since) * rate)
        if tokens >= 1.0:
            self._buckets[key_id] = (tokens - 1.0, now)
            return None
        self._buckets[key_id] = (tokens, now)
        return max(1, math.ceil((1.0 - tokens) / rate))
