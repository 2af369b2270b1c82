"""The outcome update in Python: the same arithmetic as the Lua in scripts.py.

For a store without Redis (the Postgres fallback keeps the same fields as a JSON object
per provider: lock the row, `apply_outcome`, write it back), and so a test can check
that both implementations agree field by field. `fields` maps the names in
scripts.FIELDS (plus "ec") to the strings Redis would hold; the result is in the same
form, so `RedisDWAStore.parse`-style readers work on either.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from core.dwa.config import DWAConfig
from core.dwa.scripts import FIELDS, SHORT
from core.dwa.state import Outcome, OutcomeKind

_LN2 = 0.6931471805599453


def apply_outcome(fields: Mapping[str, str], outcome: Outcome, cost: float, config: DWAConfig) -> dict[str, str]:
    h = {name: _number(fields.get(name)) for name in FIELDS}
    now = float(outcome.now)
    kind = outcome.kind
    latency, ttft = float(outcome.latency_s), float(outcome.ttft_s or 0.0)
    tin, tout = int(outcome.input_tokens), int(outcome.output_tokens)

    dt = now - h["t"] if fields.get("t") is not None else 0.0
    if dt < 0:
        dt = 0.0
    else:
        h["t"] = now

    def decay(half_life: float) -> float:
        return math.exp(-_LN2 * dt / half_life)

    da, dl, de = (decay(config.availability_half_life_s), decay(config.latency_half_life_s),
                  decay(config.evidence_half_life_s))
    h["s"] *= da
    h["f"] *= da
    for name in ("lw", "fw", "pw"):
        h[name] *= dl
    h["mw"] *= decay(config.steady_half_life_s)
    for name in ("ew", "fe"):
        h[name] *= de
    dh = decay(config.history_half_life_s)
    h["hw"] *= dh
    h["hx"] *= dh

    h["n"] += 1
    cancelled = kind is OutcomeKind.CANCELLED
    if not cancelled:
        h["ti"] += tin
        h["to"] += tout
        h["c"] += cost
    if kind is OutcomeKind.SUCCESS or cancelled:
        if not cancelled:  # (a hedge's cancelled loser: its expected latency, no verdict on availability)
            if outcome.fresh:  # a fresh look: the means restart from this sample
                h["lw"] = h["fw"] = h["pw"] = h["mw"] = 0.0
                h["hx"] += 1
                h["f"] = 0.0  # and the failures that kept traffic away are over
            h["ok"] += 1
            h["s"] += 1
            h["cf"] = 0
        x = max(latency, 0.000001)
        lx = math.log(x)
        h["lw"] += 1
        h["lm"] += (x - h["lm"]) / h["lw"]
        xn = x / (tout + config.ttft_tokens)
        h["nm"] += (xn - h["nm"]) / h["lw"]
        h["hw"] += 1
        h["hm"] += (xn - h["hm"]) / h["hw"]
        h["mw"] += 1
        h["mm"] += (xn - h["mm"]) / h["mw"]
        h["qn"] += (outcome.load - h["qn"]) / h["lw"]
        h["qx"] += (outcome.load * xn - h["qx"]) / h["lw"]
        h["qq"] += (outcome.load * outcome.load - h["qq"]) / h["lw"]
        h["l1"] += (lx - h["l1"]) / h["lw"]
        h["l2"] += (lx * lx - h["l2"]) / h["lw"]
        gx = math.log(xn)
        h["g1"] += (gx - h["g1"]) / h["lw"]
        h["g2"] += (gx * gx - h["g2"]) / h["lw"]
        h["ew"] += 1
        if ttft > 0:
            h["fw"] += 1
            h["fm"] += (ttft - h["fm"]) / h["fw"]
            h["fe"] += 1
            lt = math.log(max(ttft, 0.000001))
            h["f1"] += (lt - h["f1"]) / h["fw"]
            h["f2"] += (lt * lt - h["f2"]) / h["fw"]
        if tout > 0:
            h["pw"] += 1
            h["pm"] += (x / tout - h["pm"]) / h["pw"]
        if not cancelled:
            h["ls"] = max(h["ls"], now)
    else:
        h["le"] = max(h["le"], now)
        if kind is OutcomeKind.FAILURE:
            h["ko"] += 1
            h["cf"] += 1
            if h["ho"] != 1:  # failures while tripped are the breaker's business
                h["f"] += 1
                h["fd"] += (latency - h["fd"]) / h["f"]
        elif kind is OutcomeKind.RATE_LIMITED:
            h["rlc"] += 1
        else:
            h["ce"] += 1

    _transitions(h, kind, now, float(outcome.retry_after_s or 0.0), config)

    out = {name: ("%.10g" if name in SHORT else "%.17g") % h[name] for name in FIELDS}
    if not (kind is OutcomeKind.SUCCESS or cancelled):
        out["ec"] = outcome.error or kind.value
    elif "ec" in fields:
        out["ec"] = fields["ec"]
    return out


def _transitions(h: dict[str, float], kind: OutcomeKind, now: float, retry: float, config: DWAConfig) -> None:
    """breaker.TRANSITIONS_LUA, line for line."""
    if kind is OutcomeKind.SUCCESS:
        h["ho"] = h["tr"] = h["ou"] = h["pu"] = 0
        if retry > 0 and now + retry > h["rl"]:  # its limit headers said nothing is left
            h["rl"] = now + retry
    elif kind is OutcomeKind.FAILURE:
        if h["ho"] == 1:
            if now >= h["ou"]:
                h["tr"] += 1
                h["ou"] = now + min(config.cooldown_s * 2 ** (h["tr"] - 1), config.cooldown_max_s)
                h["pu"] = 0
        elif h["cf"] >= config.failure_threshold:
            h["ho"], h["tr"], h["ou"], h["pu"] = 1, 1, now + config.cooldown_s, 0
    elif kind is OutcomeKind.RATE_LIMITED:
        wait = retry if retry > 0 else config.rate_limit_default_s
        if now + wait > h["rl"]:
            h["rl"] = now + wait
        h["pu"] = 0
    else:
        h["pu"] = 0


def _number(value: str | None) -> float:
    try:
        return float(value) if value is not None else 0.0
    except ValueError:
        return 0.0
