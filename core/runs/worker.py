"""Who advances runs besides the function that started one: `orchesity worker` and the cron sweep.

- `work` (a long-running loop, a Fly process group; several may run at once): claims the
  oldest run that is ready and held by nobody, advances it for up to a budget, and again.
  On stop (SIGTERM) it claims nothing more, and the runs it holds start no new step: the
  running ones get `grace` seconds to end and checkpoint (then are cancelled, to run again
  elsewhere), and each run is released, so another worker takes over at once instead of
  waiting out the lease. When idle, at most every LEARN_EVERY_S, it embeds the runs that
  succeeded into the knowledge base (core/runs/knowledge.py).
- `sweep` (the cron tick, and what advances runs on Lambda): the same for every ready run
  within a time budget, which takes over the leases of owners that died and ends the runs
  past their deadline; then the completion callbacks that are due, and the runs that
  succeeded into the knowledge base.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

from core.runs.callbacks import deliver_due
from core.runs.executor import Executor, RunState

if TYPE_CHECKING:
    from core.services import Services

log = logging.getLogger("orchesity.runs")

LEARN_EVERY_S = 10.0


async def sweep(svc: Services, *, budget: float = 20.0) -> dict[str, Any]:
    """Advance every ready run nobody holds, within `budget` seconds; deliver due callbacks."""
    executor = Executor(svc, owner=f"sweep:{uuid.uuid4().hex[:12]}")
    end = time.monotonic() + budget
    advanced: dict[str, str | None] = {}
    while time.monotonic() < end:
        run = await executor.claim_next()
        if run is None:
            break
        advanced[str(run.id)] = await executor.advance(run, max(0.0, end - time.monotonic()))
    from core.runs.knowledge import learn_quietly

    return {"advanced": len(advanced), "runs": advanced, "callbacks_delivered": await deliver_due(svc),
            "runs_learned": await learn_quietly(svc)}


async def work(svc: Services, stop: asyncio.Event, *, budget: float = 30.0, concurrency: int = 4,
               grace: float = 10.0) -> int:
    """Advance runs until `stop` is set; how many advances were made."""
    executor = Executor(svc, owner=f"worker:{uuid.uuid4().hex[:12]}")
    slots = asyncio.Semaphore(concurrency)
    running: set[asyncio.Task[Any]] = set()
    advances = 0
    poll = svc.settings.WORKER_POLL_SECONDS
    learnt_at = 0.0
    log.info("worker %s: advancing runs, %d at a time", executor.owner, concurrency)
    while not stop.is_set():
        await slots.acquire()
        run = None
        try:
            run = await executor.claim_next()
        except Exception as exc:  # noqa: BLE001 - Postgres away: try again, do not die
            log.warning("worker: cannot claim a run (%s: %s)", type(exc).__name__, exc)
        if run is None:  # nothing ready: learn from what ended, look again in a moment
            slots.release()
            if time.monotonic() - learnt_at > LEARN_EVERY_S:
                from core.runs.knowledge import learn_quietly

                learnt_at = time.monotonic()
                learning = asyncio.create_task(learn_quietly(svc))  # an embedding call must not hold up claims
                running.add(learning)
                learning.add_done_callback(running.discard)
            try:
                await asyncio.wait_for(stop.wait(), poll)
            except TimeoutError:
                pass
            continue
        advances += 1

        async def advance(claimed: RunState = run) -> None:
            try:
                await executor.advance(claimed, budget, stop=stop)
            except Exception:  # noqa: BLE001 - one run's trouble must not stop the worker
                log.exception("worker: advancing run %s failed", claimed.id)
            finally:
                slots.release()

        task = asyncio.create_task(advance())
        running.add(task)
        task.add_done_callback(running.discard)
    if running:
        done, pending = await asyncio.wait(running, timeout=grace)
        for task in pending:  # cut short: each releases its run on the way out
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    log.info("worker %s: stopped after %d advances", executor.owner, advances)
    return advances
