"""What images cost: token prices, per-image prices, estimates before paying. No Prefect here.

Bills come from what each provider reports (OpenAI's token `usage`, Runware's `cost`,
Scenario's compute units, skills.video's credits, gptimage2.ai's documented 10 credits an
image). Estimates come from a documented price, OpenAI's published token table, or a price set
on the credentials block; a provider with none of these has an unknown cost, which is said, not
guessed.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gptimg_flows.errors import BudgetExceeded
from gptimg_flows.results import cost_text

#: OpenAI's output tokens for one 1024x1024 image by quality (gpt-image models' table);
#: other sizes scale with pixels. `auto` is billed as high.
OUTPUT_TOKENS_1024 = {"low": 272, "medium": 1056, "high": 4160, "auto": 4160}
#: What an input image adds, for estimates only (the bill uses the answer's `usage`).
INPUT_IMAGE_TOKENS_ESTIMATE = 323
#: OpenAI's Batch API bills half the synchronous price.
BATCH_DISCOUNT = 0.5

Basis = Literal["documented price", "token table", "block-set price", "free", "unknown"]


class TokenPrices(BaseModel):
    """USD per 1M tokens (gpt-image-2, OpenAI's pricing page as quoted in 2026).

    Set your own on `OpenAIImageCredentials.token_prices` when prices change or are negotiated.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    text_input: float = Field(5.0, ge=0)
    cached_text_input: float = Field(1.25, ge=0)
    image_input: float = Field(8.0, ge=0)
    cached_image_input: float = Field(2.0, ge=0)
    image_output: float = Field(30.0, ge=0)


GPT_IMAGE_2_PRICES = TokenPrices()
#: Token prices by OpenAI image model, as published. Another model (gpt-image-2.5 variants
#: since 2026-09) is priced only when its block says how (`token_prices`, `price_per_image`):
#: never with another model's prices.
TOKEN_PRICES_BY_MODEL: dict[str, TokenPrices] = {"gpt-image-2": GPT_IMAGE_2_PRICES}


def usage_cost(usage: Any, prices: TokenPrices | None = GPT_IMAGE_2_PRICES) -> float | None:
    """The USD bill of one Images API answer's `usage`, or None if it cannot be read.

    Input tokens split into text and image (`input_tokens_details`), each with its cached part
    where the answer gives one; output tokens are image output (`output_tokens_details` may be
    missing, and gpt-image-2 outputs images). None too when the model's prices are unknown.
    """
    if not isinstance(usage, dict) or prices is None:
        return None
    inputs = _count(usage.get("input_tokens"))
    output = _count(usage.get("output_tokens"))
    if inputs is None or output is None:
        return None
    details = usage.get("input_tokens_details")
    details = details if isinstance(details, dict) else {}
    image_in = _count(details.get("image_tokens")) or 0
    text_in = _count(details.get("text_tokens"))
    text_in = max(0, inputs - image_in) if text_in is None else text_in
    cached = _count(details.get("cached_tokens")) or 0
    cached_image = (
        min(cached, image_in)
        if "cached_image_tokens" not in details
        else (_count(details.get("cached_image_tokens")) or 0)
    )
    cached_text = min(max(0, cached - cached_image), text_in)
    usd = (
        (text_in - cached_text) * prices.text_input
        + cached_text * prices.cached_text_input
        + (image_in - cached_image) * prices.image_input
        + cached_image * prices.cached_image_input
        + output * prices.image_output
    ) / 1_000_000
    return round(usd, 9)


def _count(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and value >= 0 else None


def output_tokens(quality: str | None, width: int, height: int) -> int:
    """OpenAI's table, scaled by pixels: good for an estimate, never for the bill."""
    per_tile = OUTPUT_TOKENS_1024.get(quality or "auto", OUTPUT_TOKENS_1024["auto"])
    return math.ceil(per_tile * width * height / (1024 * 1024))


def token_estimate(
    prompt: str,
    n: int,
    quality: str | None,
    size: tuple[int, int],
    input_images: int = 0,
    prices: TokenPrices = GPT_IMAGE_2_PRICES,
) -> float:
    """Expected USD of one request from the token table (text ≈ 4 characters a token)."""
    text = max(1, math.ceil(len(prompt) / 4))
    images_in = INPUT_IMAGE_TOKENS_ESTIMATE * input_images
    out = output_tokens(quality, *size) * n
    usd = text * prices.text_input + images_in * prices.image_input + out * prices.image_output
    return round(usd / 1_000_000, 6)


class Price(BaseModel):
    """What one request is expected to cost, and on what basis."""

    model_config = ConfigDict(frozen=True)

    amount: float | None = Field(description="None: unknown")
    unit: str
    basis: Basis
    note: str = ""


class CostEstimate(BaseModel):
    """The expected cost of a run: its total per unit, and how it was worked out."""

    requests: int
    images: int
    total: dict[str, float] = Field(default_factory=dict, description="unit → amount")
    basis: list[Basis] = Field(default_factory=list)
    unknown: int = Field(0, description="requests whose cost cannot be estimated")
    notes: list[str] = Field(default_factory=list)
    at_most: dict[str, float] = Field(
        default_factory=dict,
        description="with text_check='remake': the total if every request is made again as "
        "many times as it may be",
    )

    def with_remakes(self, attempts: int) -> CostEstimate:
        """This estimate, with what `attempts` remakes of every request could cost at most."""
        if attempts <= 0:
            return self
        most = {unit: round(amount * (1 + attempts), 6) for unit, amount in self.total.items()}
        shown = ", ".join(f"{amount:g} {unit}" for unit, amount in most.items()) or "unknown"
        note = (
            f"text_check='remake': a request whose text misreads is made again up to "
            f"{attempts} more time(s); at most {shown} if every one were"
        )
        return self.model_copy(update={"at_most": most, "notes": [*self.notes, note]})

    @classmethod
    def of(cls, prices: list[tuple[Price, int]]) -> CostEstimate:
        """From (price of one request, images it makes) pairs."""
        total: dict[str, float] = {}
        bases: list[Basis] = []
        notes: list[str] = []
        unknown = 0
        for price, _ in prices:
            if price.basis not in bases:
                bases.append(price.basis)
            if price.note and price.note not in notes:
                notes.append(price.note)
            if price.amount is None:
                unknown += 1
                continue
            total[price.unit] = round(total.get(price.unit, 0.0) + price.amount, 6)
        return cls(
            requests=len(prices),
            images=sum(n for _, n in prices),
            total=total,
            basis=bases,
            unknown=unknown,
            notes=notes,
        )

    def text(self) -> str:
        """One sentence: what is known, what is not, and where the figures come from."""
        known = [b for b in self.basis if b != "unknown"]
        source = f" ({'; '.join(known)})" if known else ""
        if not self.unknown:
            return f"{cost_text(self.total)}{source}"
        if not self.total:
            return "unknown (no documented price: set `price_per_image` on the block)"
        return (
            f"{cost_text(self.total)}{source} for {self.requests - self.unknown} request(s), "
            f"and unknown for the other {self.unknown}"
        )


def must_fit(max_cost: float, unit: str, estimate: float, what: str, advice: str = "") -> None:
    """A purchase made as a whole (a distributed batch, a Batch API batch) is refused before
    its first credit when its estimate passes `max_cost`: nothing can stop it half way."""
    if estimate > max_cost + 1e-9:
        raise BudgetExceeded(
            f"max_cost={max_cost:g} {unit}: {what} estimated at {estimate:g} {unit}{advice}"
        )


class Budget:
    """`max_cost` for one run: each paid submit reserves its estimate first and is refused
    (BudgetExceeded) when reserving it would pass the budget; once the job is done its
    reservation is settled at what the provider billed.

    Only a run's own spend counts; images answered from the archive reserve nothing. A
    failed job keeps its reservation: it may have been billed.
    """

    def __init__(self, max_cost: float | None, unit: str) -> None:
        self.max_cost = max_cost
        self.unit = unit
        self.committed = 0.0
        self.reserved = 0.0
        self.stopped: str | None = None  # once one submit is refused, the run submits no more

    def reserve(self, price: Price) -> float:
        """Hold `price` (raises BudgetExceeded if it does not fit); returns what was held."""

        if self.max_cost is None:
            return 0.0
        if self.stopped:
            raise BudgetExceeded(f"not submitted: the run stopped at its budget ({self.stopped})")
        if price.amount is None:
            why = price.note or "the cost of this request cannot be estimated"
            raise BudgetExceeded(f"max_cost={self.max_cost:g} cannot be kept: {why}")
        if price.unit != self.unit:
            raise BudgetExceeded(f"max_cost is in {self.unit} but this request costs {price.unit}")
        after = self.committed + self.reserved + price.amount
        if after > self.max_cost + 1e-9:
            self.stopped = f"max_cost={self.max_cost:g} {self.unit}"
            raise BudgetExceeded(
                f"max_cost={self.max_cost:g} {self.unit}: this request is estimated at "
                f"{price.amount:g} {self.unit} ({price.basis}), and {self.spent_or_held():g} "
                f"{self.unit} of the budget is already spent or held"
            )
        self.reserved += price.amount
        return price.amount

    def settle(self, held: float, billed: float | None) -> None:
        """Replace a reservation by the bill (the reservation stays when the bill is unknown)."""
        if self.max_cost is None:
            return
        self.reserved = max(0.0, self.reserved - held)
        self.committed += held if billed is None else billed

    def spent_or_held(self) -> float:
        return round(self.committed + self.reserved, 9)
