"""Costs as providers bill them, and estimates from documented prices: pure tables."""

from __future__ import annotations

import pytest

from gptimg_flows.models import EditRequest, ImageRequest
from gptimg_flows.providers import GptImage2AIProvider, OfflineProvider, ScenarioProvider
from gptimg_flows.providers.openai import OpenAIProvider
from gptimg_flows.spend.prices import TokenPrices, output_tokens, token_estimate, usage_cost


def test_the_issues_example_1024x1536_medium_is_about_0_048_usd() -> None:
    out = output_tokens("medium", 1024, 1536)
    assert out == 1584
    usage = {
        "input_tokens": 12,
        "output_tokens": out,
        "total_tokens": 12 + out,
        "input_tokens_details": {"text_tokens": 12, "image_tokens": 0},
    }
    assert usage_cost(usage) == pytest.approx(0.04758, abs=1e-6)


def test_usage_prices_text_image_and_cached_tokens_apart() -> None:
    usage = {
        "input_tokens": 1400,
        "output_tokens": 4160,
        "input_tokens_details": {"text_tokens": 400, "image_tokens": 1000, "cached_tokens": 600},
    }
    # 600 cached: image first (600 of 1000 image tokens) — 400 text @5, 400 image @8,
    # 600 cached image @2, 4160 out @30 (USD per 1M)
    expected = (400 * 5 + 400 * 8 + 600 * 2 + 4160 * 30) / 1e6
    assert usage_cost(usage) == pytest.approx(expected)


def test_negotiated_prices_and_unreadable_usage() -> None:
    usage = {"input_tokens": 100, "output_tokens": 1000}
    assert usage_cost(usage, TokenPrices(text_input=1, image_output=10)) == pytest.approx(0.0101)
    assert usage_cost(None) is None and usage_cost({"output_tokens": "many"}) is None


def test_estimates_say_their_basis() -> None:
    oa = OpenAIProvider("sk-test")
    price = oa.price(ImageRequest(prompt="x" * 40, size="1024x1024", quality="high", n=2))
    assert price.basis == "token table" and price.unit == "usd"
    assert price.amount == pytest.approx(token_estimate("x" * 40, 2, "high", (1024, 1024)))
    assert price.amount == pytest.approx((10 * 5 + 2 * 4160 * 30) / 1e6)
    edit = EditRequest(prompt="y", images=["a.png", "b.png"], size="1024x1024", quality="low")
    assert oa.price(edit).amount == pytest.approx((1 * 5 + 2 * 323 * 8 + 272 * 30) / 1e6)

    assert GptImage2AIProvider("k").price(ImageRequest(prompt="x", n=3)).model_dump() == {
        "amount": 30.0,
        "unit": "credits",
        "basis": "documented price",
        "note": "",
    }
    assert OfflineProvider().price(ImageRequest(prompt="x")).amount == 0.0
    scenario = ScenarioProvider("k", "s")
    unknown = scenario.price(ImageRequest(prompt="x"))
    assert unknown.amount is None and unknown.basis == "unknown"
    assert "set price_per_image (in cu) on its credentials block" in unknown.note
    scenario.price_per_image = 4.5
    assert scenario.price(ImageRequest(prompt="x", n=2)).model_dump() == {
        "amount": 9.0,
        "unit": "cu",
        "basis": "block-set price",
        "note": "",
    }


def test_batch_files_are_split_at_openais_limits() -> None:
    from gptimg_flows.providers import openai_batch
    from gptimg_flows.providers.openai_batch import request_line, split_lines

    oa = OpenAIProvider("sk-test")
    line = request_line(oa, "k" * 64, ImageRequest(prompt="a kite", size="1024x1024"))
    body = __import__("json").loads(line)
    assert body["custom_id"] == "k" * 64 and body["url"] == "/v1/images/generations"
    assert body["body"] == {"model": "gpt-image-2", "prompt": "a kite", "n": 1, "size": "1024x1024"}
    many = [(f"id{i}", b"x" * 10) for i in range(openai_batch.MAX_LINES + 5)]
    assert [len(c) for c in split_lines(many)] == [openai_batch.MAX_LINES, 5]
    seventy_mb = b"x" * (70 * 1024 * 1024)
    big = [(f"id{i}", seventy_mb) for i in range(5)]  # 70 MB lines: 2 fit in 200 MB
    assert [len(c) for c in split_lines(big)] == [2, 2, 1]


def test_the_token_table_is_keyed_by_model_and_another_model_is_not_priced_as_gpt_image_2() -> None:
    from gptimg_flows.models import ImageRequest
    from gptimg_flows.providers.openai import OpenAIProvider
    from gptimg_flows.spend.prices import TokenPrices

    request = ImageRequest(prompt="a lighthouse", size="1024x1024", quality="high")
    assert OpenAIProvider("k").price(request).basis == "token table"
    newer = OpenAIProvider("k", model="gpt-image-2.5-mini").price(request)
    assert newer.amount is None and newer.basis == "unknown"
    assert "gpt-image-2.5-mini" in newer.note and "token_prices" in newer.note
    told = OpenAIProvider(
        "k", model="gpt-image-2.5-mini", token_prices=TokenPrices(image_output=10)
    )
    assert told.price(request).amount is not None


def test_an_estimate_says_what_it_assumed_for_an_unset_size_and_quality() -> None:
    """#33: an unset quality was priced as high with no word about it."""
    from gptimg_flows.blocks.resolve import unkeyed_block
    from gptimg_flows.models import ImageRequest

    block = unkeyed_block("openai")
    assert block is not None
    adapter = block.get_provider()
    unset = adapter.price(ImageRequest(prompt="a kite"))
    assert "size auto estimated as 1024x1536" in unset.note
    assert "quality auto estimated as high" in unset.note
    given = adapter.price(ImageRequest(prompt="a kite", size="1024x1024", quality="low"))
    assert given.note == "" and given.amount is not None and given.amount < (unset.amount or 0)
