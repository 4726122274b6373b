"""The text check's parts that need no Prefect (issue #34): what a prompt quotes, matching that
knows OCR's habits, and the embedded engine reading a real rendered image."""

from __future__ import annotations

import random

import pytest

from gptimg_flows.media import render
from gptimg_flows.testing.misspell import misspell, misspell_quotes
from gptimg_flows.textcheck import OCRMissing, best_match, expected_lines, quoted, require_ocr
from gptimg_flows.textcheck import ocr as ocr_module
from gptimg_flows.textcheck.check import MAX_ERROR_RATE, judge
from gptimg_flows.textcheck.ocr import read_lines


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ('a poster that says "GRAND OPENING"', ["GRAND OPENING"]),
        ("a sign reading 'Open 7 Days' and \u201cFree Wifi\u201d", ["Open 7 Days", "Free Wifi"]),
        ("the cat's hat, don't 'SALE' it", ["SALE"]),
        ("\u2018Fresh\u2019 bread, \u00abPain frais\u00bb", ["Fresh", "Pain frais"]),
        ('blank "   " and "!!" are not text', []),
        ("no quotes at all", []),
        ("it's Sam's shop", []),
    ],
)
def test_a_prompt_quotes_what_its_image_should_carry(prompt: str, expected: list[str]) -> None:
    assert quoted(prompt) == expected


def test_given_text_wins_over_the_quotes() -> None:
    assert expected_lines('say "A"', [" Menu ", "", "Soup $4"]) == ["Menu", "Soup $4"]
    assert expected_lines('say "A"', None) == ["A"]
    assert expected_lines('say "A"', []) == []


@pytest.mark.parametrize(
    ("expected", "read", "rate"),
    [
        ("GRAND OPENING", ["a poster that says", 's "GRAND', 'OPENING" in bold'], 0.0),
        ("Summer Sale", ["summer   sale"], 0.0),
        ("BOOK NOW", ["B0OK N0W"], 0.0),  # O read as 0
        ("Hello Bill", ["He11o Bi|l"], 0.0),  # l read as 1 or |
        ("Espresso $3.50", ["Espresso $3.50 on slate"], 0.0),
        ("GRAND OPENING", ["GRAND OPENNG"], round(1 / 12, 4)),  # a letter dropped
        ("GRAND OPENING", ["GRAND OPEINNG"], round(2 / 12, 4)),  # two swapped
        ("GRAND OPENING", ["GRAND OPENINGG"], round(1 / 12, 4)),  # a letter doubled
        ("Go", ["GGo"], 0.5),  # doubled at the edge of the word
        ("50% OFF", ["Sale50%off today"], 0.0),  # digits end a word: OCR's lost space is free
        ("Sale", ["Sole"], 0.25),  # a letter replaced
        ("Sale", [], 1.0),  # nothing read
    ],
)
def test_matching_tolerates_ocr_habits_and_counts_real_misspellings(
    expected: str, read: list[str], rate: float
) -> None:
    assert best_match(expected, read).error_rate == rate


def test_the_best_region_is_reported() -> None:
    match = best_match("Free Shipping", ["Today only:", "FREE SHIPPNG on all", "orders"])
    assert match.region == "free shippng" and match.edits == 1


def test_a_check_passes_only_when_every_line_is_read_right() -> None:
    good = judge(["GRAND OPENING", "Oct 14"], ["GRAND OPENING", "Oct 14"], "engine 1")
    assert good.passed and good.error_rate == 0.0 and good.engine == "engine 1"
    bad = judge(["GRAND OPENING", "Oct 14"], ["GRAND OPENING", "Oct 41"], "engine 1")
    assert not bad.passed
    assert [line.passed for line in bad.lines] == [True, False]
    assert bad.error_rate > MAX_ERROR_RATE
    assert judge([], ["anything"], "e").passed


def test_misspell_always_changes_a_letter() -> None:
    rng = random.Random(7)
    for text in ["GRAND OPENING", "Summer Sale 2026", "Espresso $3.50", "Go"]:
        for kind in ("drop", "double", "swap", "replace"):
            wrong = misspell(text, rng, kind)
            assert wrong != text and best_match(text, [wrong]).edits >= 1, (text, kind, wrong)
    assert misspell_quotes('say "Hello" now', rng).startswith('say "')


def test_without_the_extra_a_check_is_refused_with_the_install_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ocr_module, "find_spec", lambda name: None)
    with pytest.raises(OCRMissing, match=r"pip install 'gptimg-flows\[ocr\]'") as caught:
        require_ocr()
    assert caught.value.field == "text_check"


def test_the_embedded_engine_reads_a_rendered_headline() -> None:
    prompt = 'a poster that says "GRAND OPENING" in bold letters'
    data = render.encode(render.draw(prompt, 768, 768, seed=3), "png")
    read = read_lines(data)
    assert judge(quoted(prompt), read, "e").passed, read
    wrong = render.encode(render.draw(prompt.replace("OPENING", "OPENNG"), 768, 768, 3), "png")
    assert not judge(quoted(prompt), read_lines(wrong), "e").passed


def test_an_estimate_says_what_the_remakes_could_cost() -> None:
    from gptimg_flows.spend.prices import CostEstimate

    estimate = CostEstimate(requests=2, images=2, total={"credits": 20.0})
    assert estimate.with_remakes(0) == estimate
    remade = estimate.with_remakes(2)
    assert remade.total == {"credits": 20.0} and remade.at_most == {"credits": 60.0}
    assert "up to 2 more time(s); at most 60 credits" in remade.notes[-1]


def test_what_ocr_read_is_shown_escaped_in_the_artifact() -> None:
    from gptimg_flows.engine.artifacts import text_cell
    from gptimg_flows.models import ArchivedImage

    check = judge(["SALE"], ["<img src=x onerror=alert(1)> | [win](http://evil.example)"], "e")
    image = ArchivedImage(
        uri="/a/images/ab/abc.png",
        sidecar_uri="/a/images/ab/abc.json",
        sha256="abc",
        mime="image/png",
        width=1,
        height=1,
        size_bytes=1,
        provider="offline",
        model="m",
        prompt='a "SALE" sign',
        text_check=check,
    )
    shown = text_cell(image)
    assert shown.startswith("**✗ text**") and "expected: SALE" in shown
    assert "<img" not in shown and "&lt;img" in shown
    assert " | " not in shown and "http://" not in shown
    assert text_cell(image.model_copy(update={"text_check": None})) == ""


def test_a_text_rule_that_cannot_be_kept_is_refused_before_paying() -> None:
    from gptimg_flows.engine.text_checking import text_rule
    from gptimg_flows.errors import InvalidRequest

    with pytest.raises(InvalidRequest, match=r"text_check='maybe'; it is 'off', 'flag' or"):
        text_rule("maybe")  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match=r"text_check_attempts=11; it must be 0 to 10"):
        text_rule("remake", None, 11)
    with pytest.raises(InvalidRequest, match=r"does not work with batch_api=True yet"):
        text_rule("remake", batch_api=True)
    assert text_rule("flag", batch_api=True).on and not text_rule("off").on
    rule = text_rule("flag", ["A"])
    assert rule.given(None) is rule and rule.given(["B"]).expected == ["B"]
    assert rule.expected_for('say "C"') == ["A"]
    assert text_rule("flag").expected_for("no quotes", ["from source"]) == ["from source"]


@pytest.mark.parametrize(
    ("expected", "message"),
    [
        ([], r"expected_text has an empty line"),
        (["SALE", "  "], r"expected_text has an empty line"),
        ("SALE", r"must be a list of strings .* got str"),
        (["SALE", 5], r"must hold only strings"),
        (["--", "SALE"], r"a line with no letter or digit"),
        ([f"line {i}" for i in range(9)], r"has 9 lines; the check reads at most 8"),
        (["A very long headline " * 6], r"is 102 characters; the check reads at most 100"),
    ],
)
def test_an_expected_text_the_check_cannot_read_is_refused_before_paying(
    expected: object, message: str
) -> None:
    from gptimg_flows.engine.text_checking import text_rule
    from gptimg_flows.errors import InvalidRequest

    with pytest.raises(InvalidRequest, match=message) as caught:
        text_rule("flag", expected)  # type: ignore[arg-type]
    assert caught.value.field == "expected_text"
    with pytest.raises(InvalidRequest, match=message):  # a row's own expected_text too
        text_rule("flag").given(expected)  # type: ignore[arg-type]
    assert text_rule("off").given(["  "]).expected == ["  "], "not checked: not refused"


def test_a_prompt_quoting_more_than_the_check_reads_is_refused() -> None:
    from gptimg_flows.engine.text_checking import text_rule
    from gptimg_flows.errors import InvalidRequest

    long = 'a flyer with "' + "Every Saturday at the Market " * 5 + '"'
    with pytest.raises(InvalidRequest, match=r"the text the prompt quotes is 120 characters"):
        text_rule("flag").expected_for(long)
    assert text_rule("flag", ["Every Saturday"]).expected_for(long) == ["Every Saturday"]
    assert text_rule("off").expected_for(long), "off: the quotes are not judged"


def test_the_caption_leaves_the_quoted_words_to_the_headline() -> None:
    from gptimg_flows.textcheck.expected import without_quotes

    assert without_quotes('a sign "SALE 50%" and \u201cnew\u201d, don\'t') == (
        'a sign "\u2026" and \u201c\u2026\u201d, don\'t'
    )
    words = read_lines(render.render('a poster that says "Harbor Lights"', 1024, 1024, seed=3))
    assert sum("harbor" in line.lower() for line in words) == 1, words
