"""Container health check: ``python healthcheck.py [URL]`` exits 0 when URL answers 2xx.

Without a URL: a worker or scheduler (``METRICS_PORT`` set) is asked for its ``/metrics``, a web
process for ``/readyz`` on ``PORT`` (default 8001). Standard library only, no shell needed.
"""

from __future__ import annotations

import os
import sys
import urllib.request


def default_url() -> str:
    """What this container serves, from its own settings."""
    if os.environ.get("METRICS_PORT"):
        return f"http://127.0.0.1:{os.environ['METRICS_PORT']}/metrics"
    return f"http://127.0.0.1:{os.environ.get('PORT') or 8001}/readyz"


def main() -> int:
    url = sys.argv[1] if len(sys.argv) > 1 else default_url()
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            return 0 if 200 <= response.status < 300 else 1
    except Exception as exc:  # noqa: BLE001 - any failure is "unhealthy", said in one line
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
