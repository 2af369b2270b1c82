"""The circuit breaker: states, transitions, and the one-probe rule.

Shared by every instance through the provider's Redis hash; the transitions below run
inside the outcome script (scripts.py), so they are atomic with the metrics update.

    closed ──(failure_threshold consecutive retryable failures)──▶ open
    open ──(cooldown elapses)──▶ half_open
    half_open ──(a router claims the probe)──▶ half_open + probe running
    probe succeeds ──▶ closed          (any success closes, and resets the cooldown)
    probe fails    ──▶ open, cooldown doubled (capped at cooldown_max_s)

Only retryable failures (timeout, connection error, 5xx) count. A client error (other
4xx) is the request's fault and changes nothing. A 429 is not an outage either: it sets
`rate_limited_until` from Retry-After, and the provider is skipped until then, like an
open circuit, without touching the failure count.

Exactly one probe across instances: the first router that picks a half-open provider
claims the probe with a tiny script (`SET probe_until` only if nobody holds it) before
calling the provider; the others see the claim and treat the provider as open. The
claim is one extra round trip, but only on the pick that sends a probe, at most once per
cooldown period per provider, so it costs nothing on the hot path. Folding the claim
into the next read instead (optimistically) would let two instances that read at the
same moment both probe a provider that may still be down. A claim that is never
resolved (the instance died mid-call) expires after `probe_timeout_s`.
"""

from __future__ import annotations

from enum import Enum

from core.dwa.state import ProviderState


class CircuitState(str, Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


def circuit_state(state: ProviderState, now: float) -> CircuitState:
    if not state.tripped:
        return CircuitState.CLOSED
    if now < state.open_until:
        return CircuitState.OPEN
    return CircuitState.HALF_OPEN


def is_available(state: ProviderState, now: float) -> bool:
    """Closed and not rate limited: any strategy may pick it."""
    return not state.tripped and state.rate_limited_until <= now


def is_probe_candidate(state: ProviderState, now: float) -> bool:
    """Half-open, nobody is probing it, and not rate limited: the next pick may probe it."""
    return (
        state.tripped
        and state.open_until <= now
        and state.probe_until <= now
        and state.rate_limited_until <= now
    )


def available_at(state: ProviderState, now: float) -> float:
    """The earliest time this provider could take a request (now if it can)."""
    until = state.rate_limited_until
    if state.tripped:
        until = max(until, state.open_until, state.probe_until)
    return max(until, now)


# The transitions, as a fragment of the outcome script (scripts.py; update.py has the
# same in Python). In scope: `h`, the provider's fields as numbers, already updated for
# this outcome (h.cf counts it); `now`, `kind`, `retry` (Retry-After, 0 if none) and
# the settings cool0, coolmax, threshold, rl_default.
#   h.cf consecutive failures  h.ho 1 while tripped  h.ou open until
#   h.tr trips since the last close  h.pu probe until  h.rl rate limited until
TRANSITIONS_LUA = r"""
if kind == 'ok' then
  -- any success proves the provider answers: close, forget the trips and the probe
  h.ho = 0; h.tr = 0; h.ou = 0; h.pu = 0
  -- and one whose limit headers said nothing is left is rested until they reset
  if retry > 0 and now + retry > h.rl then h.rl = now + retry end
elseif kind == 'fail' then
  if h.ho == 1 then
    if now >= h.ou then
      -- half-open and the probe (or a call still running from before) failed: reopen,
      -- twice as long as last time, capped
      h.tr = h.tr + 1
      h.ou = now + math.min(cool0 * 2 ^ (h.tr - 1), coolmax)
      h.pu = 0
    end
  elseif h.cf >= threshold then
    h.ho = 1; h.tr = 1; h.ou = now + cool0; h.pu = 0
  end
elseif kind == 'rate' then
  local wait = retry
  if wait <= 0 then wait = rl_default end
  if now + wait > h.rl then h.rl = now + wait end
  h.pu = 0  -- the probe got no verdict; another may run once the cooldown ends
else -- 'client': the provider answered; a probe that got a 4xx frees the slot (as a
  -- hedge's loser, 'cancel', does: no verdict)
  h.pu = 0
end
"""
