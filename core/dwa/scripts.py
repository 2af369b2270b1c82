"""The Lua that runs inside Redis: one script per outcome, one to claim a probe.

Lua keeps each update atomic across instances with no lock and no WATCH retry loop, and
Upstash's REST API runs it too. Time is always an argument (`now`), never Redis TIME, so
a caller's clock (or the benchmark's simulated one) drives the state. update.py holds
the same update in Python (for a store without Redis, and to test this one against).

The provider hash (KEYS[1]) holds, by field:
    t        time of the last update (the decay clock)
    s, f     successes / retryable failures (not counted while tripped), decayed with
             availability_half_life_s
    fd       decayed mean duration of the failures f counts (s), weight f: what a
             failure costs the caller before it can fail over (see scoring.py)
    lw, lm   decayed latency sample weight and mean latency (s); decayed with
             latency_half_life_s. A decayed mean is an EWMA whose alpha is set by the
             elapsed time: m += (x - m) / (w * 2^(-dt/H) + 1); a fresh look (the
             outcome's `fresh`) sets the weights to 0 first: the means restart from it
    nm       decayed mean of latency / (output tokens + ttft_tokens): what routing
             compares (see scoring.py), same weight lw
    l1, l2   decayed means of ln(latency) and ln(latency)^2 (p95 from a log-normal fit)
    g1, g2   the same for ln(nm's sample): the spread of what routing compares, the
             reply's length taken out (a request's `latency_quantile`, see scoring.py)
    qn qx qq decayed means of the load (calls in flight when the call started, itself
             included), of load × nm's sample, and of load²: nm as a function of the
             load, by least squares (see scoring.py); same weight lw
    hw, hm   the same for nm over a long memory (history_half_life_s), not restarted
             by a fresh look: how fast the provider has been, not just lately
    mw, mm   the same for nm over a steadier memory (steady_half_life_s), restarted by a
             fresh look like lw: what routing compares while the 6 s mean only wanders
             within its noise (see scoring.settled)
    hx       fresh looks answered, decayed over that long memory: how often a verdict
             was checked (a cold start's never was; see scoring.py)
    fw, fm   the same for time to first token (streams)
    f1, f2   decayed means of ln(TTFT) and its square, weight fw: the spread of a
             stream's first token (calls hanging before it; a stream's latency_quantile)
    pw, pm   the same for seconds per output token
    ew, fe   latency / TTFT samples decayed with evidence_half_life_s (slower): how
             much routing trusts nm / fm (see scoring.py)
    cf       consecutive retryable failures (shared, so across instances)
    ho ou tr pu rl   breaker: tripped flag, open until, trips, probe until, rate limited
             until (see breaker.py)
    n ok ko rlc ce   counts of outcomes: all, successes, failures, 429s, client errors
    ti to c  input tokens, output tokens, cost in USD (a cancelled hedge's loser's unknown)
    ls le ec time of the last success, of the last error, last error class

The in-flight hash (KEYS[2]) maps an instance id to "count:time" (see store.py).
"""

from __future__ import annotations

from core.dwa.breaker import TRANSITIONS_LUA
from core.kv import Script

# Every numeric field, in the order the script reads and writes them.
FIELDS = ("t", "s", "f", "lw", "lm", "nm", "l1", "l2", "ew", "fw", "fm", "fe", "pw", "pm", "cf", "ho",
          "ou", "tr", "pu", "rl", "n", "ok", "ko", "rlc", "ce", "ti", "to", "c", "ls", "le", "qn", "qx", "qq",
          "fd", "hw", "hm", "hx", "g1", "g2", "f1", "f2", "mw", "mm")
# Statistics, written with 10 significant digits (short strings parse faster on every
# read); times, counters and money are written in full (%.17g).
SHORT = frozenset(("s", "f", "lw", "lm", "nm", "l1", "l2", "ew", "fw", "fm", "fe", "pw", "pm", "qn", "qx", "qq",
                   "fd", "hw", "hm", "hx", "g1", "g2", "f1", "f2", "mw", "mm"))

# ARGV, in order (store.py builds them).
RECORD_ARGS = ("now", "kind", "latency", "ttft", "tin", "tout", "cost", "retry", "eclass", "instance",
               "inflight", "hl_av", "hl_lat", "threshold", "cool0", "coolmax", "rl_default", "ttl",
               "if_age", "ktok", "hl_ev", "hl_hist", "hl_steady", "fresh", "load")


def _lua_list(names: tuple[str, ...] | frozenset[str]) -> str:
    return ", ".join(f"'{name}'" for name in names)


RECORD_SOURCE = (
    "local FIELDS = {" + _lua_list(FIELDS) + "}\n"
    "local SHORT = {" + ", ".join(f"{name} = true" for name in sorted(SHORT)) + "}\n"
    + "".join(f"local {name} = ARGV[{i + 1}]\n" for i, name in enumerate(RECORD_ARGS))
    + r"""
now, latency, ttft, tin, tout, cost, retry = tonumber(now), tonumber(latency), tonumber(ttft),
  tonumber(tin), tonumber(tout), tonumber(cost), tonumber(retry)
hl_av, hl_lat, hl_ev, threshold = tonumber(hl_av), tonumber(hl_lat), tonumber(hl_ev), tonumber(threshold)
cool0, coolmax, rl_default = tonumber(cool0), tonumber(coolmax), tonumber(rl_default)
ttl, if_age, ktok, load = tonumber(ttl), tonumber(if_age), tonumber(ktok), tonumber(load)
hl_hist, hl_steady = tonumber(hl_hist), tonumber(hl_steady)

local raw = redis.call('HMGET', KEYS[1], unpack(FIELDS))
local h = {}
for i, name in ipairs(FIELDS) do h[name] = tonumber(raw[i]) or 0 end

-- decay everything to `now`; an outcome older than the last update (another instance
-- recorded a later one first) is added undecayed, at the last update's time
local dt = 0
if raw[1] then dt = now - h.t end
if dt < 0 then dt = 0 else h.t = now end
local function decay(half_life) return math.exp(-0.6931471805599453 * dt / half_life) end
local da, dl, de = decay(hl_av), decay(hl_lat), decay(hl_ev)
h.s = h.s * da; h.f = h.f * da
h.lw = h.lw * dl; h.fw = h.fw * dl; h.pw = h.pw * dl; h.mw = h.mw * decay(hl_steady)
local dh = decay(hl_hist)
h.ew = h.ew * de; h.fe = h.fe * de; h.hw = h.hw * dh; h.hx = h.hx * dh

h.n = h.n + 1
if kind ~= 'cancel' then h.ti = h.ti + tin; h.to = h.to + tout; h.c = h.c + cost end
if kind == 'ok' or kind == 'cancel' then
  if kind == 'ok' then
    -- a fresh look (see Outcome.fresh): the means start again from this sample, and
    -- the failures that kept traffic away are over (see scoring.py)
    if fresh == '1' then
      h.lw = 0; h.fw = 0; h.pw = 0; h.mw = 0; h.f = 0; h.hx = h.hx + 1
    end
    h.ok = h.ok + 1; h.s = h.s + 1; h.cf = 0
  end
  -- (a hedge's cancelled loser: its expected latency, no verdict on its availability)
  local x = math.max(latency, 0.000001)
  local lx = math.log(x)
  h.lw = h.lw + 1
  h.lm = h.lm + (x - h.lm) / h.lw
  local xn = x / (tout + ktok)
  h.nm = h.nm + (xn - h.nm) / h.lw
  h.hw = h.hw + 1; h.hm = h.hm + (xn - h.hm) / h.hw
  h.mw = h.mw + 1; h.mm = h.mm + (xn - h.mm) / h.mw
  h.qn = h.qn + (load - h.qn) / h.lw
  h.qx = h.qx + (load * xn - h.qx) / h.lw
  h.qq = h.qq + (load * load - h.qq) / h.lw
  h.l1 = h.l1 + (lx - h.l1) / h.lw
  h.l2 = h.l2 + (lx * lx - h.l2) / h.lw
  local gx = math.log(xn)
  h.g1 = h.g1 + (gx - h.g1) / h.lw
  h.g2 = h.g2 + (gx * gx - h.g2) / h.lw
  h.ew = h.ew + 1
  if ttft > 0 then
    h.fw = h.fw + 1; h.fm = h.fm + (ttft - h.fm) / h.fw; h.fe = h.fe + 1
    local lt = math.log(math.max(ttft, 0.000001))
    h.f1 = h.f1 + (lt - h.f1) / h.fw
    h.f2 = h.f2 + (lt * lt - h.f2) / h.fw
  end
  if tout > 0 then h.pw = h.pw + 1; h.pm = h.pm + (x / tout - h.pm) / h.pw end
  if kind == 'ok' then h.ls = math.max(h.ls, now) end
else
  h.le = math.max(h.le, now)
  if kind == 'fail' then
    h.ko = h.ko + 1; h.cf = h.cf + 1
    -- While the circuit is tripped the breaker is the model: the calls that were
    -- already in flight when it opened, and failed probes, say nothing new, and
    -- counting them would keep availability down long after a recovery.
    if h.ho ~= 1 then h.f = h.f + 1; h.fd = h.fd + (latency - h.fd) / h.f end
  elseif kind == 'rate' then
    h.rlc = h.rlc + 1
  else
    h.ce = h.ce + 1
  end
end
"""
    + TRANSITIONS_LUA
    + r"""
local out = {}
for _, name in ipairs(FIELDS) do
  out[#out + 1] = name
  if SHORT[name] then
    out[#out + 1] = string.format('%.10g', h[name])
  else
    out[#out + 1] = string.format('%.17g', h[name])
  end
end
if kind ~= 'ok' and kind ~= 'cancel' then out[#out + 1] = 'ec'; out[#out + 1] = eclass end
redis.call('HSET', KEYS[1], unpack(out))
redis.call('EXPIRE', KEYS[1], ttl)

-- this instance's in-flight count, with the time it was true
redis.call('HSET', KEYS[2], instance, inflight .. ':' .. string.format('%.17g', now))
redis.call('EXPIRE', KEYS[2], ttl)
if redis.call('HLEN', KEYS[2]) > 16 then
  local all = redis.call('HGETALL', KEYS[2])
  for i = 1, #all, 2 do
    local at = tonumber(string.match(all[i + 1], ':(.*)$')) or 0
    if at < now - if_age then redis.call('HDEL', KEYS[2], all[i]) end
  end
end
return {h.cf, h.ho}
"""
)

# ARGV: now, probe_timeout_s. Returns 1 if this caller may send the half-open probe.
CLAIM_PROBE_SOURCE = r"""
local now = tonumber(ARGV[1])
local v = redis.call('HMGET', KEYS[1], 'ho', 'ou', 'pu', 'rl')
if tonumber(v[1]) ~= 1 then return 1 end            -- closed meanwhile: nothing to claim
if (tonumber(v[2]) or 0) > now then return 0 end    -- reopened
if (tonumber(v[3]) or 0) > now then return 0 end    -- another instance is probing
if (tonumber(v[4]) or 0) > now then return 0 end    -- rate limited
redis.call('HSET', KEYS[1], 'pu', string.format('%.17g', now + tonumber(ARGV[2])))
return 1
"""

RECORD = Script(RECORD_SOURCE)
CLAIM_PROBE = Script(CLAIM_PROBE_SOURCE)

# By sha, for KV.pipeline(..., scripts=SCRIPTS) (re-sent in full after a NOSCRIPT).
SCRIPTS: dict[str, Script] = {script.sha: script for script in (RECORD, CLAIM_PROBE)}
