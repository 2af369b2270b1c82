"""The result rows, the overhead column, the issues' goals, and the stdout tables."""

from __future__ import annotations

from typing import Any

TARGETS = ("direct", "reference", "litellm", "portkey", "orchesity", "orchesity_cache_hit",
           "orchesity_upstash")
# The targets of the streams and many-connections sections (the gateways, and the floor).
STREAM_TARGETS = ("direct", "reference", "litellm", "portkey", "orchesity")

# The keys the issue fixes for every result row, in its order.
ROW_KEYS = ("target", "concurrency", "rps", "p50_ms", "p95_ms", "p99_ms", "overhead_p50_ms",
            "errors", "peak_rss_mb")


def failed_row(target: str, concurrency: int, error: str) -> dict[str, Any]:
    row: dict[str, Any] = {k: None for k in ROW_KEYS}
    row.update(target=target, concurrency=concurrency, status="failed", error=error)
    return row


def add_overheads(rows: list[dict[str, Any]]) -> None:
    """overhead_p50_ms = p50 of the row - p50 of `direct` at the same concurrency."""
    direct = {r["concurrency"]: r["p50_ms"] for r in rows
              if r["target"] == "direct" and r.get("p50_ms") is not None}
    for row in rows:
        base = direct.get(row["concurrency"])
        if row.get("p50_ms") is None or base is None:
            row["overhead_p50_ms"] = None
        else:
            row["overhead_p50_ms"] = round(row["p50_ms"] - base, 3)


def _row(rows: list[dict[str, Any]], target: str, concurrency: int) -> dict[str, Any] | None:
    for row in rows:
        if row["target"] == target and row["concurrency"] == concurrency and row.get("rps") is not None:
            return row
    return None


def _ratio(a: dict[str, Any] | None, b: dict[str, Any] | None) -> float | None:
    if not a or not b or not b.get("rps"):
        return None
    return round(a["rps"] / b["rps"], 2)


def goals(rows: list[dict[str, Any]], round_trips: float | None, *, rest_round_trips: float | None = None,
          streams: dict[str, Any] | None = None, connections: dict[str, Any] | None = None,
          workers: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The targets of issues 5 and 15, each with the measured value and pass / FAIL / n/a."""
    out: list[dict[str, Any]] = []

    def goal(name: str, value: Any, ok: bool | None) -> None:
        out.append({"goal": name, "value": value, "status": "n/a" if ok is None else ("pass" if ok else "FAIL")})

    orc16 = _row(rows, "orchesity", 16)
    for other, times in (("portkey", 2), ("litellm", 15)):
        ratio = _ratio(orc16, _row(rows, other, 16))
        goal(f"c=16: orchesity rps >= {times}x {other}, no errors",
             None if ratio is None else f"{ratio}x, {orc16['errors']} errors",  # type: ignore[index]
             None if ratio is None else ratio >= times and orc16["errors"] == 0)  # type: ignore[index]
    orc1, pk1 = _row(rows, "orchesity", 1), _row(rows, "portkey", 1)
    over = orc1 and orc1["overhead_p50_ms"]
    goal("c=1: orchesity miss p50 overhead <= 1 ms", over, None if over is None else over <= 1)
    pk_over = pk1 and pk1["overhead_p50_ms"]
    goal("c=1: orchesity miss p50 overhead <= portkey's", None if over is None or pk_over is None
         else f"{over} vs {pk_over} ms", None if over is None or pk_over is None else over <= pk_over)
    hit1 = _row(rows, "orchesity_cache_hit", 1)
    goal("c=1: orchesity cache hit p50 <= 2 ms", hit1 and hit1["p50_ms"],
         None if not hit1 else hit1["p50_ms"] <= 2)
    ratio = _ratio(orc16, _row(rows, "reference", 16))
    goal("c=16: orchesity rps >= 0.8x reference", None if ratio is None else f"{ratio}x",
         None if ratio is None else ratio >= 0.8)
    rss = [r["peak_rss_mb"] for r in rows if r["target"].startswith("orchesity") and r.get("peak_rss_mb")]
    goal("orchesity peak RSS per worker <= 150 MB (wrk runs)", max(rss) if rss else None,
         None if not rss else max(rss) <= 150)
    for name, value in (("2 Redis round trips per cache miss", round_trips),
                        ("2 Upstash REST round trips per cache miss", rest_round_trips)):
        goal(name, value, None if value is None else round(value) == 2 and abs(value - 2) < 0.2)
    streams = streams or {}
    orc_s, pk_s = streams.get("orchesity") or {}, streams.get("portkey") or {}
    for key, label in (("ttft_overhead_p50_ms", "streaming TTFT p50 overhead"),
                       ("cpu_us_per_chunk", "CPU per relayed chunk (us)")):
        a, b = orc_s.get(key), pk_s.get(key)
        goal(f"{label}: orchesity <= portkey", None if a is None or b is None else f"{a} vs {b}",
             None if a is None or b is None else a <= b)
    level = ((connections or {}).get("orchesity") or {}).get("1000") or {}
    name = "1,000 concurrent streams: 0 errors, all open at once, peak RSS <= 400 MB"
    if level.get("peak_rss_mb") is None:
        goal(name, None, None)
    else:
        goal(name, f"{level['errors']} errors, {level['peak_open_streams']} open, {level['peak_rss_mb']} MB",
             level["errors"] == 0 and level["peak_open_streams"] == 1000 and level["peak_rss_mb"] <= 400)
    scale = (workers or {}).get("speedup")
    goal("2 workers >= 1.6x 1 worker (c=16 rps)", scale, None if scale is None else scale >= 1.6)
    return out


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(rows: list[dict[str, Any]]) -> str:
    header = ("target", "conc", "rps", "p50 ms", "p95 ms", "p99 ms", "overhead p50", "errors",
              "peak RSS MB", "cpu %", "mock cpu %", "other cpu %", "note")
    lines = []
    for r in rows:
        if r.get("rps") is None:
            note = "FAILED: " + (r.get("error") or "").splitlines()[0][:70] if r.get("error") else ""
        else:
            note = ""
            if r.get("upstream_requests") is not None and r["target"] == "orchesity_cache_hit":
                note = f"upstream calls: {r['upstream_requests']}"
        lines.append((r["target"], str(r["concurrency"]), _fmt(r.get("rps"), 1), _fmt(r.get("p50_ms")),
                       _fmt(r.get("p95_ms")), _fmt(r.get("p99_ms")), _fmt(r.get("overhead_p50_ms")),
                       _fmt(r.get("errors")), _fmt(r.get("peak_rss_mb"), 1), _fmt(r.get("target_cpu_pct"), 0),
                       _fmt(r.get("mock_cpu_pct"), 0), _fmt(r.get("other_cpu_pct"), 0), note))
    return grid(header, lines)


def grid(header: tuple[str, ...], lines: list[tuple[str, ...]]) -> str:
    """A plain-text table: the first column left-aligned, numbers right-aligned."""
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h)
              for i, h in enumerate(header)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip(),
           "  ".join("-" * w for w in widths)]
    last = len(header) - 1
    for line in lines:
        cells = [c.rjust(w) if 1 <= i < last or (i == last and header[i] != "note") else c.ljust(w)
                 for i, (c, w) in enumerate(zip(line, widths))]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out)


def streams_table(streams: dict[str, Any]) -> str:
    header = ("target", "conc", "streams", "chunks", "ttft p50 ms", "ttft overhead", "ttft p99 ms",
              "cpu us/chunk", "cpu %", "errors")
    lines = [(t, _fmt(v.get("concurrency")), _fmt(v.get("streams")), _fmt(v.get("content_chunks")),
              _fmt(v.get("ttft_p50_ms")), _fmt(v.get("ttft_overhead_p50_ms")), _fmt(v.get("ttft_p99_ms")),
              _fmt(v.get("cpu_us_per_chunk"), 1), _fmt(v.get("target_cpu_pct"), 0),
              _fmt(v.get("errors")) if "error" not in v else "FAILED")
             for t, v in streams.items()]
    return grid(header, lines)


def connections_table(connections: dict[str, Any]) -> str:
    header = ("target", "streams", "open at once", "errors", "idle RSS MB", "peak RSS MB",
              "KB/stream", "cpu %", "ttft p50 ms", "stream p50 s")
    lines = []
    for t, levels in connections.items():
        for n, v in levels.items():
            if not isinstance(v, dict) or n == "growth":
                continue
            stream_s = v.get("stream_p50_ms")
            lines.append((t, n, _fmt(v.get("peak_open_streams")), _fmt(v.get("errors")) if "error" not in v
                          else "FAILED", _fmt(v.get("idle_rss_mb"), 1), _fmt(v.get("peak_rss_mb"), 1),
                          _fmt(v.get("rss_kb_per_stream"), 1), _fmt(v.get("target_cpu_pct"), 0),
                          _fmt(v.get("ttft_p50_ms")), _fmt(None if stream_s is None else stream_s / 1000)))
    return grid(header, lines)


def workers_table(workers: dict[str, Any]) -> str:
    header = ("workers", "round", "rps", "p50 ms", "errors", "gateway cpu %", "wrk cpu %", "mock cpu %",
              "stores cpu %", "other cpu %")
    lines = [(str(r["workers"]), str(r["round"]), _fmt(r.get("rps"), 1), _fmt(r.get("p50_ms")),
              _fmt(r.get("errors")), _fmt(r.get("target_cpu_pct"), 0), _fmt(r.get("loadgen_cpu_pct"), 0),
              _fmt(r.get("mock_cpu_pct"), 0), _fmt(r.get("stores_cpu_pct"), 0), _fmt(r.get("other_cpu_pct"), 0))
             for r in workers.get("runs", [])]
    return grid(header, lines)


def growth(levels: dict[str, Any]) -> list[dict[str, Any]]:
    """How a gateway's cost grows with open streams, between consecutive measured levels
    of the connections section: peak RSS per added stream, CPU per 1,000 added streams."""
    measured = sorted((int(n), v) for n, v in levels.items()
                      if n.isdigit() and isinstance(v, dict) and v.get("peak_rss_mb") is not None)
    return [{"from": n0, "to": n1,
             "rss_kb_per_added_stream": round(1024 * (b["peak_rss_mb"] - a["peak_rss_mb"]) / (n1 - n0), 1),
             "cpu_pct_per_1000_added_streams": round(1000 * (b["target_cpu_pct"] - a["target_cpu_pct"]) / (n1 - n0), 1)}
            for (n0, a), (n1, b) in zip(measured, measured[1:])]


def add_stream_overheads(streams: dict[str, Any]) -> None:
    """ttft_overhead_p50_ms = a target's streaming TTFT p50 - `direct`'s, in the streams section."""
    base = (streams.get("direct") or {}).get("ttft_p50_ms")
    for result in streams.values():
        p50 = result.get("ttft_p50_ms")
        result["ttft_overhead_p50_ms"] = None if p50 is None or base is None else round(p50 - base, 3)
