"""WSGI app of `bench compare`: a fixed amount of CPU work under the GIL, optionally after a wait.

GET /?cpu=C&io=W first sleeps W milliseconds (time.sleep releases the GIL, like a database call),
then burns C milliseconds of this thread's CPU time in pure Python (the GIL is held throughout,
apart from the interpreter's own switches between threads). The work is counted in CPU time, not
wall time: a request preempted by the scheduler or waiting for the GIL still does the same work, so
a saturated machine serves fewer requests per second, as it would with a real view.

GET /?hold=H holds the GIL for about H milliseconds of CPU in one C call (`sum(range(n))`, calibrated
when the process loads the app), as a C extension does: no other thread of the process runs meanwhile. It is
the blocked-worker workload's stuck request.

The answer carries the worker's pid (`pid=N`), so the bench can tell which process served it.
"""
import os
import time
from urllib.parse import parse_qs

PID = os.getpid()


def burn(ms):
    """Busy loop in Python bytecode until this thread has used `ms` milliseconds of CPU."""
    end = time.thread_time() + ms / 1000.0
    n = 0
    while time.thread_time() < end:
        for _ in range(100):
            n += 1
    return n


def _timed_sum(n):
    """This thread's CPU time for one `sum(range(n))`: immune to other processes on the CPUs
    (every worker calibrates at once when uWSGI starts them)."""
    start = time.thread_time()
    sum(range(n))
    return time.thread_time() - start


# Calibrated once, when the worker loads the app, on the fastest of five, in CPU time: a hold
# burns about `ms` of CPU in one C call, like `cpu=` burns its CPU in Python.
_SUMS_PER_MS = 2_000_000 / max(min(_timed_sum(2_000_000) for _ in range(5)) * 1000.0, 1e-6)


def hold_gil(ms):
    """One C call of about `ms` ms of CPU: no other thread of this process runs meanwhile."""
    sum(range(int(ms * _SUMS_PER_MS)))


def application(environ, start_response):
    qs = parse_qs(environ.get("QUERY_STRING", ""))
    try:
        cpu = float(qs.get("cpu", ["0"])[0])
        io = float(qs.get("io", ["0"])[0])
        hold = float(qs.get("hold", ["0"])[0])
    except ValueError:
        cpu, io, hold = 0.0, 0.0, 0.0
    if hold > 0:
        hold_gil(hold)
    if io > 0:
        time.sleep(io / 1000.0)
    n = burn(cpu) if cpu > 0 else 0
    body = ("pid=%d cpu=%g io=%g hold=%g loops=%d\n" % (PID, cpu, io, hold, n)).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
