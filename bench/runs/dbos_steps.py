"""Run inside DBOS Transact's own venv (.bench/dbos-venv; never imports Orchesity):
`python dbos_steps.py URL RUNS STEPS` runs RUNS workflows of STEPS sequential no-op
steps on the Postgres at URL (its system database) and prints each step's duration, in
seconds, as a JSON list on its last line: the time from one step's end to the next one's,
what a step costs inside a durable workflow (its checkpoint included)."""

from __future__ import annotations

import json
import sys
import time

from dbos import DBOS, DBOSConfig

url, runs, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
config: DBOSConfig = {"name": "orchesity-bench", "system_database_url": url, "log_level": "WARNING",
                      "console_log_level": "WARNING"}
DBOS(config=config)


@DBOS.step()
def noop() -> None:
    return None


@DBOS.workflow()
def pipeline(n: int) -> list[float]:
    marks = [time.perf_counter()]
    for _ in range(n):
        noop()
        marks.append(time.perf_counter())
    return [b - a for a, b in zip(marks, marks[1:], strict=False)]


DBOS.launch()
durations: list[float] = []
for _ in range(runs):
    durations += pipeline(steps)
DBOS.destroy()
print(json.dumps(durations))
