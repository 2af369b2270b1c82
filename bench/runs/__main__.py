"""python -m bench.runs: what the run engine costs, and how it holds up when a worker dies.

On an embedded PostgreSQL and Redis started here in a temporary directory (migrated):

- per_step_ms: the time from one step's end to the next one's in runs of sequential no-op
  steps (bench/runs/steps.py), i.e. a step's two checkpoints (started; output and event,
  each a fenced transaction, then the event to Redis) and the executor around them; the
  runs are advanced in-process by core/runs/executor.py. DBOS Transact, in its own virtual
  environment under .bench/dbos-venv (installed on first use, pinned), runs the same
  no-op steps in workflows on the same Postgres (bench/runs/dbos_steps.py).
- runs_per_s: 1,000 runs of 5 no-op steps, queued up front, drained by 1 and then by 2
  `orchesity worker` processes (WORKER_CONCURRENCY each); timed from their release to the
  last run's end, with the workers already started and polling. runs_cpu says where the
  machine's CPU went meanwhile (the workers, Postgres, this process's polling): on two
  cores, Postgres and the workers share them.
- recovery_s: two workers; the one holding a run is SIGKILLed in the middle of a step;
  the seconds until the other one starts that step again (RUN_LEASE_SECONDS, `--lease`).
- sse_p50_ms: the gateway under uvicorn advances a run of short steps while a client
  reads its /stream; each event's latency is the client's receipt time minus the time the
  executor stamped on it before its checkpoint's commit.

    uv run python -m bench.runs --json bench-out/runs.json [--runs 1000] [--lease 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psutil

from bench.overhead.procs import Service, Supervisor, free_port, tree_cpu
from bench.routing.sim import percentile

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / ".bench" / "runs"
DBOS_VENV = ROOT / ".bench" / "dbos-venv"
DBOS_REQUIREMENT = "dbos==3.4.0"
MODULES = "core.tools.builtin,bench.runs"
NOOP = {"kind": "python", "entry": "bench.runs.steps:noop"}


def _chain(n: int, **step: Any) -> dict[str, Any]:
    """A pipeline of `n` steps, each needing the one before."""
    steps = [{"id": f"s{i}", **(step or NOOP), **({"needs": [f"s{i - 1}"]} if i else {})} for i in range(n)]
    return {"steps": steps}


def _ms(values: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values]
    return {"p50": round(statistics.median(ms), 3), "p95": round(percentile(ms, 95), 3), "samples": len(ms)}


async def _open(env: dict[str, str]) -> Any:
    from core.services import Services
    from core.settings import Settings, load_settings

    return await Services.open(load_settings(_env_file=None, **{k: v for k, v in env.items()
                                                                if k in Settings.model_fields}))


async def _queue(svc: Any, pipeline: dict[str, Any], n: int, *, held: bool = False) -> list[uuid.UUID]:
    """`n` runs of `pipeline`, queued (held: not claimable until released)."""
    from sqlalchemy import text

    from core.runs.submit import Caller, RunRequest, submit

    ids = [(await submit(svc, RunRequest(pipeline=pipeline), caller=Caller("bench"), delivery_id=None)).id for _ in range(n)]
    if held:
        async with svc.db.engine.begin() as conn:
            await conn.execute(text("UPDATE runs SET wake_at = now() + interval '1 day' WHERE id = ANY(:ids)"),
                               {"ids": ids})
    return ids


async def _release(svc: Any, ids: list[uuid.UUID]) -> None:
    from sqlalchemy import text

    async with svc.db.engine.begin() as conn:
        await conn.execute(text("UPDATE runs SET wake_at = NULL WHERE id = ANY(:ids)"), {"ids": ids})


async def _ended(svc: Any, ids: list[uuid.UUID], timeout: float) -> None:
    from sqlalchemy import text

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        async with svc.db.engine.connect() as conn:
            left = (await conn.execute(text("SELECT count(*) FROM runs WHERE id = ANY(:ids) AND status IN "
                                            "('queued', 'running')"), {"ids": ids})).scalar_one()
        if left == 0:
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{left} runs did not end within {timeout:.0f}s")


# --- per step ------------------------------------------------------------------------------------

async def per_step_orchesity(svc: Any, runs: int, steps: int) -> list[float]:
    from core.progress import events_after
    from core.runs.executor import Executor

    executor, durations = Executor(svc, owner="bench"), []
    for run_id in await _queue(svc, _chain(steps), runs):
        status = await executor.advance(run_id, 600)
        assert status == "succeeded", status
        ends = [e.at for e in await events_after(svc.db, svc.kv, run_id) if e.type == "step.completed"]
        durations += [b - a for a, b in zip(ends, ends[1:], strict=False)]
    return durations


def ensure_dbos(log: Path) -> str:
    python = DBOS_VENV / "bin" / "python"
    marker = DBOS_VENV / ".bench-installed"
    if not marker.exists():
        uv = shutil.which("uv")
        if not uv:
            raise RuntimeError("uv is not on PATH (needed to install DBOS into .bench/dbos-venv)")
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT")}
        base = getattr(sys, "_base_executable", sys.executable)
        with open(log, "wb") as out:
            for argv in ([uv, "venv", "--allow-existing", "--python", base, str(DBOS_VENV)],
                         [uv, "pip", "install", "--compile-bytecode", "--python", str(python), DBOS_REQUIREMENT]):
                subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, env=env, check=True, timeout=1800)
        marker.write_text(DBOS_REQUIREMENT + "\n")
    return marker.read_text().strip()


def per_step_dbos(database_url: str, runs: int, steps: int, log: Path) -> list[float]:
    # DBOS takes a plain libpq URL (it picks its own driver) and creates its system database
    url = database_url.replace("postgresql+psycopg://", "postgresql://").replace("/postgres?", "/dbos_bench?")
    done = subprocess.run([str(DBOS_VENV / "bin" / "python"), str(Path(__file__).with_name("dbos_steps.py")),
                           url, str(runs), str(steps)], capture_output=True, text=True, timeout=1800,
                          env={"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp")})
    log.write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise RuntimeError(f"DBOS exited {done.returncode}; log {log}:\n{done.stderr[-1500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- workers ---------------------------------------------------------------------------------------

def _worker(sup: Supervisor, env: dict[str, str], name: str) -> Service:
    service = Service(name, [str(Path(sys.executable).parent / "orchesity"), "worker"], 0, WORK / f"{name}.log",
                      env=env, cwd=ROOT)
    sup.start(service)
    return service


def _owner(service: Service, timeout: float = 30) -> str:
    """The worker's lease owner id, from its start-up line (it is polling from then on)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        found = re.search(r"worker (worker:[0-9a-f]+): advancing runs", service.log_path.read_text(errors="replace"))
        if found:
            return found.group(1)
        if not service.alive():
            raise RuntimeError(f"{service.name} exited: {service.log_tail()}")
        time.sleep(0.05)
    raise RuntimeError(f"{service.name} did not start: {service.log_tail()}")


def _postgres() -> dict[int, float]:
    """CPU seconds so far of each Postgres process, by pid (backends come and go)."""
    return {p.pid: tree_cpu([p]) for p in psutil.process_iter(["name"]) if p.info["name"] == "postgres"}


async def runs_per_second(sup: Supervisor, svc: Any, env: dict[str, str], workers: int,
                          runs: int) -> tuple[float, dict[str, float]]:
    """(runs/s, CPU seconds the workers, Postgres and this process spent meanwhile)."""
    ids = await _queue(svc, _chain(5), runs, held=True)
    started = [_worker(sup, env, f"throughput-{workers}-{i}") for i in range(workers)]
    for service in started:
        _owner(service)
    procs = [p for service in started for p in service.processes()]
    pg, me = _postgres(), psutil.Process()
    before = (tree_cpu(procs), tree_cpu([me]))
    began = time.perf_counter()
    await _release(svc, ids)
    await _ended(svc, ids, timeout=600)
    elapsed = time.perf_counter() - began
    postgres = sum(seconds - pg.get(pid, 0.0) for pid, seconds in _postgres().items())
    cpu = {"elapsed_s": round(elapsed, 2), "workers_s": round(tree_cpu(procs) - before[0], 2),
           "postgres_s": round(postgres, 2), "bench_s": round(tree_cpu([me]) - before[1], 2)}
    for service in started:
        sup.stop(service)
    return round(runs / elapsed, 1), cpu


async def recovery(sup: Supervisor, svc: Any, env: dict[str, str]) -> float:
    from sqlalchemy import text

    from core.progress import events_after

    workers = [_worker(sup, env, f"recovery-{i}") for i in range(2)]
    owners = {_owner(service): service for service in workers}
    [run_id] = await _queue(svc, {"steps": [{"id": "long", "kind": "python", "entry": "bench.runs.steps:pause",
                                             "arguments": {"seconds": 2.0}}]}, 1)
    end = time.monotonic() + 30
    while time.monotonic() < end:
        if any(e.type == "step.started" for e in await events_after(svc.db, svc.kv, run_id)):
            break
        await asyncio.sleep(0.01)
    async with svc.db.engine.connect() as conn:
        holder = (await conn.execute(text("SELECT lease_owner FROM runs WHERE id = :id"), {"id": run_id})).scalar_one()
    victim = owners[holder]
    os.kill(victim.pid, 9)
    killed = time.time()
    while time.monotonic() < end + 60:
        starts = [e.at for e in await events_after(svc.db, svc.kv, run_id) if e.type == "step.started"]
        if len(starts) == 2:
            break
        await asyncio.sleep(0.01)
    else:
        raise RuntimeError("the run was not taken over")
    await _ended(svc, [run_id], timeout=30)
    for service in workers:
        sup.stop(service)
    return round(starts[1] - killed, 3)


# --- SSE ---------------------------------------------------------------------------------------------

async def sse_latency(sup: Supervisor, env: dict[str, str], key: str, steps: int) -> list[float]:
    import httpx

    port = free_port()
    gateway = sup.start(Service("gateway", [sys.executable, "-m", "uvicorn", "functions.gateway:app", "--host",
                                            "127.0.0.1", "--port", str(port), "--loop", "uvloop", "--http",
                                            "httptools", "--no-access-log", "--log-level", "warning"],
                                port, WORK / "gateway.log", env=env, cwd=ROOT))
    gateway.wait_ready(60)
    pipeline = _chain(steps, kind="python", entry="bench.runs.steps:pause", arguments={"seconds": 0.01})
    latencies: list[float] = []
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60,
                                 headers={"authorization": f"Bearer {key}"}) as client:
        answer = (await client.post("/api/runs", json={"pipeline": pipeline})).json()
        async with client.stream("GET", answer["stream_url"]) as stream:
            async for line in stream.aiter_lines():
                if line.startswith("data:"):
                    event = json.loads(line[5:])
                    if event["type"] != "run.queued":  # stamped before the 202: the client was not reading yet
                        latencies.append(time.time() - event["at"])
    sup.stop(gateway)
    return latencies


# --- main ------------------------------------------------------------------------------------------

async def _bench(options: argparse.Namespace, sup: Supervisor, data: Path) -> dict[str, Any]:
    from bench.coldstart.__main__ import _prepare

    embedded, env, key = await _prepare(data)  # open to the end: it owns the embedded servers
    env = {**env, "ORCHESITY_TOOL_MODULES": MODULES, "RUN_LEASE_SECONDS": str(options.lease),
           "WORKER_POLL_SECONDS": "0.05", "LOG_LEVEL": "INFO", "RUN_INLINE_BUDGET_SECONDS": "60"}
    svc = await _open(env)
    result: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                              "lease_ttl_s": options.lease}
    try:
        print("per step: orchesity ...", flush=True)
        ours = await per_step_orchesity(svc, options.step_runs, 50)
        print("per step: DBOS Transact ...", flush=True)
        version = ensure_dbos(WORK / "dbos-install.log")
        theirs = per_step_dbos(env["DATABASE_URL"], options.step_runs, 50, WORK / "dbos.log")
        result["per_step_ms"] = {"orchesity": _ms(ours), "dbos": _ms(theirs)}
        result["dbos_version"] = version.split("==")[-1]
        print(f"  orchesity {result['per_step_ms']['orchesity']}\n  dbos      {result['per_step_ms']['dbos']}")
        result["runs_per_s"], result["runs_cpu"] = {}, {}
        for workers in (1, 2):
            print(f"runs/s with {workers} worker(s), {options.runs} runs of 5 steps ...", flush=True)
            rate, cpu = await runs_per_second(sup, svc, env, workers, options.runs)
            result["runs_per_s"][str(workers)], result["runs_cpu"][str(workers)] = rate, cpu
            print(f"  {rate} runs/s; CPU seconds {cpu}", flush=True)
        print("recovery after SIGKILL ...", flush=True)
        result["recovery_s"] = await recovery(sup, svc, env)
        print(f"  {result['recovery_s']} s (lease {options.lease} s)", flush=True)
        print("SSE latency ...", flush=True)
        latencies = await sse_latency(sup, env, key, 100)
        result["sse_p50_ms"] = _ms(latencies)["p50"]
        result["sse_ms"] = _ms(latencies)
        print(f"  {result['sse_ms']}", flush=True)
    finally:
        await svc.close()
        await embedded.close()
        if embedded.db.embedded is not None:  # before its temporary directory goes
            embedded.db.embedded.stop()
    step, dbos = result["per_step_ms"]["orchesity"]["p50"], result["per_step_ms"]["dbos"]["p50"]
    result["goals"] = [
        {"goal": "per step p50 <= 1 ms", "value": step, "status": "pass" if step <= 1 else "FAIL"},
        {"goal": "per step >= 4x less than DBOS", "value": round(dbos / step, 2),
         "status": "pass" if dbos >= 4 * step else "FAIL"},
        {"goal": "2 workers >= 1.7x 1 worker", "value": round(result["runs_per_s"]["2"] / result["runs_per_s"]["1"], 2),
         "status": "pass" if result["runs_per_s"]["2"] >= 1.7 * result["runs_per_s"]["1"] else "FAIL"},
        {"goal": "recovery <= lease + 2 s", "value": result["recovery_s"],
         "status": "pass" if result["recovery_s"] <= options.lease + 2 else "FAIL"},
        {"goal": "SSE p50 <= 10 ms", "value": result["sse_p50_ms"],
         "status": "pass" if result["sse_p50_ms"] <= 10 else "FAIL"},
    ]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.runs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the result here")
    parser.add_argument("--runs", type=int, default=1000, help="runs of 5 steps for runs/s")
    parser.add_argument("--step-runs", type=int, default=20, help="runs of 50 steps for the per-step figures")
    parser.add_argument("--lease", type=float, default=5.0, help="RUN_LEASE_SECONDS for the workers")
    options = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    with Supervisor() as sup, tempfile.TemporaryDirectory(prefix="orchesity-runs-bench-") as tmp:
        result = asyncio.run(_bench(options, sup, Path(tmp)))
    print("Goals (issue 12):")
    for goal in result["goals"]:
        print(f"  [{goal['status'].lower()}] {goal['goal']}: {goal['value']}")
    if options.json:
        options.json.parent.mkdir(parents=True, exist_ok=True)
        options.json.write_text(json.dumps(result, indent=2))
        print(f"wrote {options.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
