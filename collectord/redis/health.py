"""Whether Redis answers, as every part of the Redis link sees it."""

from __future__ import annotations

import logging
import time

log = logging.getLogger("collectord.redis")


class Health:
    def __init__(self) -> None:
        self.connected = False
        self.errors = 0
        self.retries = 0
        self.last_error: str | None = None
        self.last_ok = time.monotonic()
        self._failing_since: float | None = None

    def ok(self) -> None:
        if not self.connected:
            log.info("redis reachable")
        self.connected = True
        self.last_ok = time.monotonic()
        self._failing_since = None

    def failed(self, error: BaseException) -> None:
        """A command failed or timed out: requests answer from memory until Redis is back."""
        text = f"{type(error).__name__}: {error}"[:300]
        if self.connected:
            log.warning("redis unreachable; answering from memory, retrying", extra={"error": text})
        self.connected = False
        self.errors += 1
        self.retries += 1
        self.last_error = text
        if self._failing_since is None:
            self._failing_since = time.monotonic()

    def down_for(self) -> float:
        return 0.0 if self._failing_since is None else time.monotonic() - self._failing_since
