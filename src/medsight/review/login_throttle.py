"""Slowing down password guessing at ``POST /api/login``.

A workstation on a hospital network is a target for password guessing; scrypt makes each guess cost ~50 ms of CPU,
which alone still allows thousands of guesses an hour. After ``limit`` failed log-ins for one user name, or from one
address, within ``window_s``, further attempts for it are refused with 429 until the oldest failure leaves the
window (a correct password does not get through either, so a guesser learns nothing); a successful log-in clears
the user's failures. Kept in memory per service process: a restart clears it, which is acceptable for a throttle
(the audit log keeps every attempt).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

#: Failed log-ins allowed per user name and per address within the window.
DEFAULT_LIMIT = 5
#: The window, in seconds.
DEFAULT_WINDOW_S = 900.0
#: Keys held before those without a failure in the window are swept out (and twice the survivors after each sweep).
SWEEP_AT = 1000


class LoginThrottle:
    """Failed log-ins per key (``user:<name>``, ``peer:<address>``) in a sliding window."""

    def __init__(
        self,
        limit: int = DEFAULT_LIMIT,
        window_s: float = DEFAULT_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit, self.window_s, self.clock = limit, window_s, clock
        self._failures: dict[str, deque[float]] = {}
        self._sweep_at = SWEEP_AT
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._failures.setdefault(key, deque())
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            del self._failures[key]
            return deque()
        return times

    def retry_after(self, user: str, peer: str) -> float | None:
        """Seconds until an attempt for ``user`` from ``peer`` is allowed again; None when allowed now."""
        now = self.clock()
        waits = []
        with self._lock:
            for key in (f"user:{user}", f"peer:{peer}"):
                times = self._recent(key, now)
                if len(times) >= self.limit:
                    waits.append(times[0] + self.window_s - now)
        return max(waits) if waits else None

    def failed(self, user: str, peer: str) -> None:
        now = self.clock()
        with self._lock:
            for key in (f"user:{user}", f"peer:{peer}"):
                self._failures.setdefault(key, deque()).append(now)
            if len(self._failures) > self._sweep_at:
                self._sweep(now)

    def _sweep(self, now: float) -> None:
        """Forget keys whose failures all left the window. Why: a key is otherwise only pruned when it is tried
        again, so guesses at many user names (each tried once) grew the table without bound."""
        for key in list(self._failures):
            self._recent(key, now)
        self._sweep_at = max(SWEEP_AT, 2 * len(self._failures))

    def succeeded(self, user: str) -> None:
        with self._lock:
            self._failures.pop(f"user:{user}", None)
