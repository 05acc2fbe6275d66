"""Progress of a long loop: a bar on a terminal, plain lines in a batch log.

tqdm redraws its bar with carriage returns, which a SLURM ``.out`` file or a pipe keeps as one
ever-growing line (or, with tqdm's own tty check, nothing at all: minutes of silence). ``Progress``
draws the tqdm bar when its stream is a terminal; otherwise it prints plain lines,

    [eval quality: AR baseline] 12/60 lines (20%), 35 s, ETA 0:02:20

one when the loop starts, then whenever another tenth of the total is done or ``interval_s``
passed since the last line (whichever comes first), and one when it ends: what the training
loop does for steps (``training.observability.RunLogger.plain_line``). Every command that runs
for minutes reports through it (docs/evaluation.md, "Progress").
"""

import datetime
import sys
import time

PLAIN_INTERVAL_S = 60.0
"""Most seconds between two plain lines of a running loop."""


class Progress:
    """``with Progress(total, desc, unit=...) as bar: ... bar.update(n)``; ``total`` may be None
    (unknown: lines by time only). ``enabled=False`` (another rank, ``--no-progress``) is
    silent; ``plain`` forces the plain lines (default: when ``stream`` is not a terminal)."""

    def __init__(self, total: int | None, desc: str, *, unit: str = "item", enabled: bool = True,
                 stream=None, plain: bool | None = None, interval_s: float = PLAIN_INTERVAL_S):
        self.total, self.desc, self.unit, self.enabled = total, desc, unit, enabled
        self.stream = stream if stream is not None else sys.stderr
        self.plain = (not _is_terminal(self.stream)) if plain is None else plain
        self.interval_s, self.done, self.start = interval_s, 0, time.monotonic()
        self.last_done, self.last_time = 0, self.start
        self.bar, self.postfix = None, {}
        if not enabled:
            return
        if self.plain:
            self._line()
        else:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream, dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        if not self.enabled:
            return
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self._due():
            self._line()

    def set_postfix(self, **values) -> None:
        """Figures shown after the count (``tokens=...``): on the bar, or on the next line."""
        self.postfix = values
        if self.bar is not None:
            self.bar.set_postfix(values, refresh=False)

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.last_done != self.done:
            self._line()
        self.enabled = False

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _due(self) -> bool:
        """Another tenth of the total done since the last line, the end, or ``interval_s``."""
        if time.monotonic() - self.last_time >= self.interval_s:
            return True
        if not self.total:
            return False
        tenth = 10 * self.done // self.total
        return self.done >= self.total or tenth > 10 * self.last_done // self.total

    def _line(self) -> None:
        self.last_done, self.last_time = self.done, time.monotonic()
        print(self.plain_line(), file=self.stream, flush=True)

    def plain_line(self) -> str:
        """``[desc] done/total unit (pct), elapsed s, ETA h:mm:ss``."""
        elapsed = time.monotonic() - self.start
        extra = "".join(f", {k} {v}" for k, v in self.postfix.items())
        if not self.total:
            return f"[{self.desc}] {self.done} {self.unit}s, {elapsed:.0f} s{extra}"
        text = (f"[{self.desc}] {self.done}/{self.total} {self.unit}s "
                f"({100 * self.done / self.total:.0f}%), {elapsed:.0f} s")
        if 0 < self.done < self.total:
            eta = elapsed / self.done * (self.total - self.done)
            text += f", ETA {datetime.timedelta(seconds=round(eta))}"
        return text + extra


def track(items, desc: str, *, total: int | None = None, unit: str = "item",
          enabled: bool = True):
    """``items`` one by one with a ``Progress`` (``total`` default: ``len(items)`` if any)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)
    with Progress(total, desc, unit=unit, enabled=enabled) as bar:
        for item in items:
            yield item
            bar.update()


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or file-less stream
        return False
