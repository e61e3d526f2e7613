"""Item 7, memory: the resident set size of each web worker (gunicorn's workers, not the master,
which only forks and watches) and each worker/scheduler process after the runs. Goal ≤ 120 MB
each.

The sections that start services (``http_intake``, ``dispatch_writes``, ``end_to_end``) record
their processes' RSS just before they stop them (``bench.system.record_rss``); this section
reports those figures. Run on its own (``--only memory``) it starts the whole system itself,
sends it a little traffic (a few reports through intake, dispatch and notify) and measures that.
"""

from __future__ import annotations

from bench.common import Context, Goal, Result
from bench.system import RSS

SECTION = "memory"


def run(ctx: Context) -> list[Result]:
    if not RSS:
        from bench import end_to_end

        end_to_end.run(Context(smoke=True, repeats=1))
    return [
        Result(SECTION, label, mb, "MiB RSS", goal=Goal(at_most=120))
        for label, mb in sorted(RSS.items())
    ]
