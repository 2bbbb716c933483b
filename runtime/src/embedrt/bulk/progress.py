"""Progress on standard error: rows/s, tokens/s and, where the input's size is known, an ETA.

tqdm draws the bar where it is installed (it is optional at run time); without it one line is
printed per shard written. Rates count this run only, so a resumed run does not look faster than it is.
"""

from __future__ import annotations

import sys
import time
from typing import Any


class Progress:
    def __init__(self, total: int | None, done: int, enabled: bool = True) -> None:
        """``total``: input rows expected (None: unknown); ``done``: rows finished by an earlier run."""
        self.total, self.done = total, done
        self._rows = self._tokens = 0
        self._start = time.monotonic()
        self._bar: Any = None
        self._enabled = enabled
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                return
            self._bar = tqdm(total=total, initial=done, unit="row", unit_scale=True, file=sys.stderr,
                             smoothing=0.05, dynamic_ncols=True)

    def update(self, rows: int, tokens: int) -> None:
        """``rows`` more input rows (embedded or skipped) that ran ``tokens`` tokens."""
        self._rows += rows
        self._tokens += tokens
        if self._bar is not None:
            self._bar.set_postfix_str(f"{self.tokens_per_second:,.0f} tokens/s", refresh=False)
            self._bar.update(rows)

    @property
    def tokens_per_second(self) -> float:
        return self._tokens / max(time.monotonic() - self._start, 1e-9)

    def shard_written(self, name: str) -> None:
        """Without a bar: one line per shard, with the rates and the ETA."""
        if not self._enabled or self._bar is not None:
            return
        elapsed = max(time.monotonic() - self._start, 1e-9)
        rate = self._rows / elapsed
        done = self.done + self._rows
        line = f"{name}: {done:,} rows"
        if self.total:
            line += f" of {self.total:,} ({100 * done / self.total:.0f} %)"
        line += f", {rate:,.0f} rows/s, {self._tokens / elapsed:,.0f} tokens/s"
        if self.total and rate > 0 and self.total > done:
            line += f", ETA {_duration((self.total - done) / rate)}"
        print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


__all__ = ["Progress"]
