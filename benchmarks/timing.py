"""Timing in blocks, shared by bench.py and its PyTorch worker process."""
import time

BLOCK_SECONDS = 0.25


def run_block(fn, times: list, seconds: float) -> None:
    """Calls fn once untimed, then repeatedly for about `seconds` (at least once), appending each
    call's time. The untimed call absorbs the switch from the other framework: caches holding the
    other's data, its threads still winding down (measured: see Attempts in performance.md)."""
    fn()
    end = time.perf_counter() + seconds
    while True:
        start = time.perf_counter()
        fn()
        stop = time.perf_counter()
        times.append(stop - start)
        if stop >= end:
            return
