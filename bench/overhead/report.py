"""The result rows, the overhead column, the issue's goals, and the stdout table."""

from __future__ import annotations

from typing import Any

TARGETS = ("direct", "reference", "litellm", "orchesity", "orchesity_cache_hit")

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


def goals(rows: list[dict[str, Any]], round_trips: float | None) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured value and pass / fail / n/a."""
    out: list[dict[str, Any]] = []

    def goal(name: str, value: Any, ok: bool | None) -> None:
        out.append({"goal": name, "value": value, "status": "n/a" if ok is None else ("pass" if ok else "FAIL")})

    orc16, lit16, ref16 = _row(rows, "orchesity", 16), _row(rows, "litellm", 16), _row(rows, "reference", 16)
    if orc16 and lit16 and lit16["rps"]:
        ratio = round(orc16["rps"] / lit16["rps"], 1)
        goal("c=16: orchesity rps >= 10x litellm, no errors", f"{ratio}x, {orc16['errors']} errors",
             ratio >= 10 and orc16["errors"] == 0)
    else:
        goal("c=16: orchesity rps >= 10x litellm, no errors", None, None)
    orc1 = _row(rows, "orchesity", 1)
    goal("c=1: orchesity miss p50 overhead <= 2 ms", orc1 and orc1["overhead_p50_ms"],
         None if not orc1 or orc1["overhead_p50_ms"] is None else orc1["overhead_p50_ms"] <= 2)
    hit1 = _row(rows, "orchesity_cache_hit", 1)
    goal("c=1: orchesity cache hit p50 <= 2 ms", hit1 and hit1["p50_ms"],
         None if not hit1 else hit1["p50_ms"] <= 2)
    if orc16 and ref16 and ref16["rps"]:
        ratio = round(orc16["rps"] / ref16["rps"], 2)
        goal("c=16: orchesity rps >= 0.8x reference", f"{ratio}x", ratio >= 0.8)
    else:
        goal("c=16: orchesity rps >= 0.8x reference", None, None)
    rss = [r["peak_rss_mb"] for r in rows if r["target"].startswith("orchesity") and r.get("peak_rss_mb")]
    goal("orchesity peak RSS per worker <= 150 MB", max(rss) if rss else None,
         None if not rss else max(rss) <= 150)
    goal("2 Redis round trips per cache miss", round_trips,
         None if round_trips is None else round(round_trips) == 2 and abs(round_trips - 2) < 0.2)
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
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h)
              for i, h in enumerate(header)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip(),
           "  ".join("-" * w for w in widths)]
    for line in lines:
        cells = [c.rjust(w) if 1 <= i <= 11 else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths))]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out)
