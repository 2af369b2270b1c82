"""What the operator configured about a provider: the static half of its state."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ProviderProfile:
    """A provider (deployment) as configured: name, routing priority, prices, capacity.

    `priority`: lower is preferred by the `priority` strategy (ties: the order given).
    Prices are USD per 1,000 tokens. `max_concurrency` scales the in-flight penalty
    (None: no penalty; see scoring.load_factor).
    """

    name: str
    priority: int = 100
    input_price_per_1k: float = 0.0
    output_price_per_1k: float = 0.0
    max_concurrency: int | None = None

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        """USD for one request with this usage."""
        return (input_tokens * self.input_price_per_1k + output_tokens * self.output_price_per_1k) / 1000.0

    @property
    def unit_price(self) -> float:
        """Blended USD per 1k tokens (input and output weighted equally), for comparing."""
        return (self.input_price_per_1k + self.output_price_per_1k) / 2.0
