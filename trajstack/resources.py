"""CPU time and peak memory of this process and its descendants (worker processes included).

Stage 2 fits in joblib/loky worker processes that outlive each task, so neither
`resource.getrusage(RUSAGE_CHILDREN)` (only reaped children) nor this process's own times see
their work; the monitor reads /proc instead.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path


class ProcessTreeMonitor:
    """Samples this process and its descendants (/proc, Linux): peak summed RSS and CPU seconds.

    CPU seconds are the last value seen per process, so workers that exit between samples lose at
    most one interval; the sampling thread's own CPU (a /proc scan per interval, a few percent of
    a core on a machine with many processes) is left out. Elsewhere (no /proc) both figures are
    None.
    """

    def __init__(self, interval: float = 0.25):
        self.interval = interval
        self.peak_rss = 0
        self._cpu: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self._start_cpu = 0.0
        self._own_cpu = 0.0  # CPU seconds of the sampling thread, not the work's

    def _stats(self) -> dict[int, tuple[int, float, int]]:
        """pid -> (parent pid, CPU seconds, RSS bytes) of every readable process."""
        out = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                text = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            fields = text[text.rindex(")") + 2:].split()
            out[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / self._tick,
                                    int(fields[21]) * self._page)
        return out

    def _sample(self) -> None:
        stats = self._stats()
        children: dict[int, list[int]] = {}  # one pass over /proc, not one per process of the tree
        for pid, (ppid, _, _) in stats.items():
            children.setdefault(ppid, []).append(pid)
        tree, frontier = {os.getpid()}, [os.getpid()]
        while frontier:
            found = [pid for pid in children.get(frontier.pop(), []) if pid not in tree]
            tree.update(found)
            frontier.extend(found)
        self.peak_rss = max(self.peak_rss, sum(stats[pid][2] for pid in tree if pid in stats))
        for pid in tree:
            if pid in stats:
                self._cpu[pid] = stats[pid][1]

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()
            self._own_cpu = time.thread_time()

    def __enter__(self) -> ProcessTreeMonitor:
        if Path("/proc/self/stat").exists():
            self._sample()
            self._start_cpu = sum(self._cpu.values())
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join()
            self._sample()

    @property
    def cpu_s(self) -> float | None:
        return sum(self._cpu.values()) - self._start_cpu - self._own_cpu if self._cpu else None

    @property
    def peak_rss_mb(self) -> float | None:
        return self.peak_rss / 2**20 if self.peak_rss else None
