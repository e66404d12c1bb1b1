"""WSGI app of `bench compare`: a fixed amount of CPU work under the GIL, optionally after a wait.

GET /?cpu=C&io=W first sleeps W milliseconds (time.sleep releases the GIL, like a database call),
then burns C milliseconds of this thread's CPU time in pure Python (the GIL is held throughout,
apart from the interpreter's own switches between threads). The work is counted in CPU time, not
wall time: a request preempted by the scheduler or waiting for the GIL still does the same work, so
a saturated machine serves fewer requests per second, as it would with a real view.

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


def application(environ, start_response):
    qs = parse_qs(environ.get("QUERY_STRING", ""))
    try:
        cpu = float(qs.get("cpu", ["0"])[0])
        io = float(qs.get("io", ["0"])[0])
    except ValueError:
        cpu, io = 0.0, 0.0
    if io > 0:
        time.sleep(io / 1000.0)
    n = burn(cpu) if cpu > 0 else 0
    body = ("pid=%d cpu=%g io=%g loops=%d\n" % (PID, cpu, io, n)).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
