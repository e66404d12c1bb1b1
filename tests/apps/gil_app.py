"""WSGI app for the reuselb tests: each request holds the GIL for a few milliseconds.

GET /?ms=N busy-loops in pure Python for N milliseconds (default 5), then answers with the
worker's pid, so a test can also tell which worker served it. GET /?mb=N also keeps N more
megabytes alive in the worker (its RSS grows: what uWSGI's reload-on-rss watches). GET /?hold=N
holds the GIL for about N milliseconds in one C call (sum over a range): unlike the loop of ?ms,
which lets other threads run at every switch interval (5 ms), nothing else of the process runs
Python meanwhile. GET /?linger=N answers at once and then keeps the connection for N more
milliseconds: the server calls the answer's close() (PEP 3333) after sending it and before it
closes the connection, as uWSGI does; the wait there is what a worker taking the GIL back costs.
"""
import os
import time
from urllib.parse import parse_qs

_kept = []
_sums_per_ms = None


def _hold_gil(ms):
    """One C call of about `ms` milliseconds (never shorter: calibrated on the fastest of three)."""
    global _sums_per_ms
    if _sums_per_ms is None:
        best = min(_timed_sum(2_000_000) for _ in range(3))
        _sums_per_ms = 2_000_000 / max(best * 1000.0, 1e-6)
    sum(range(int(ms * _sums_per_ms)))


def _timed_sum(n):
    start = time.perf_counter()
    sum(range(n))
    return time.perf_counter() - start


class _Linger:
    """An answer whose close() (called after it was sent) waits `ms` milliseconds."""

    def __init__(self, body, ms):
        self.body = body
        self.ms = ms

    def __iter__(self):
        yield self.body

    def close(self):
        time.sleep(self.ms / 1000.0)


def application(environ, start_response):
    qs = parse_qs(environ.get("QUERY_STRING", ""))
    try:
        ms = float(qs.get("ms", ["5"])[0])
    except ValueError:
        ms = 5.0
    try:
        mb = int(qs.get("mb", ["0"])[0])
    except ValueError:
        mb = 0
    if mb > 0:
        _kept.append(b"x" * (mb << 20))
    try:
        hold = float(qs.get("hold", ["0"])[0])
    except ValueError:
        hold = 0.0
    if hold > 0:
        _hold_gil(hold)
    end = time.perf_counter() + ms / 1000.0
    n = 0
    while time.perf_counter() < end:
        n += 1  # pure Python: holds the GIL
    body = ("pid=%d loops=%d\n" % (os.getpid(), n)).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    try:
        linger = float(qs.get("linger", ["0"])[0])
    except ValueError:
        linger = 0.0
    if linger > 0:
        return _Linger(body, linger)
    return [body]
