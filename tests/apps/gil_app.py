"""WSGI app for the reuselb tests: each request holds the GIL for a few milliseconds.

GET /?ms=N busy-loops in pure Python for N milliseconds (default 5), then answers with the
worker's pid, so a test can also tell which worker served it. GET /?mb=N also keeps N more
megabytes alive in the worker (its RSS grows: what uWSGI's reload-on-rss watches).
"""
import os
import time
from urllib.parse import parse_qs

_kept = []


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
    end = time.perf_counter() + ms / 1000.0
    n = 0
    while time.perf_counter() < end:
        n += 1  # pure Python: holds the GIL
    body = ("pid=%d loops=%d\n" % (os.getpid(), n)).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
