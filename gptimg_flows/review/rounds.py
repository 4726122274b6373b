"""Review rounds: show the candidates, and make a new round while a person asks for one."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from gptimg_flows.archive.store import Archive
from gptimg_flows.models import ArchivedImage
from gptimg_flows.results import ReviewRound
from gptimg_flows.review.pause import OnTimeout, ReviewDecision, ReviewLog, review_images


class Rounds:
    """Review rounds: show the candidates, and make a new round while a person asks for one.

    Each round's candidates are paid under their own slot (`round-2`, …), so a suspended run
    starting again from the top gets every earlier round back from the archive."""

    def __init__(
        self,
        archive: Archive,
        key: str,
        timeout_seconds: float,
        on_timeout: OnTimeout,
        max_rounds: int,
    ) -> None:
        self.archive, self.log = archive, ReviewLog(key)
        self.timeout_seconds, self.on_timeout, self.max_rounds = (
            timeout_seconds,
            on_timeout,
            max_rounds,
        )
        self.decisions: list[ReviewDecision] = []

    @property
    def approved(self) -> list[ArchivedImage]:
        return [i for d in self.decisions for i in d.approved]

    @property
    def records(self) -> list[ReviewRound]:
        return [d.round for d in self.decisions]

    async def run(
        self,
        candidates: list[ArchivedImage],
        prompt: str,
        again: Callable[[str, int], Awaitable[list[ArchivedImage]]],
        check_prompt: Callable[[str], object] | None = None,
    ) -> list[ArchivedImage]:
        """Every round's candidates, each with its review recorded."""
        shown: list[ArchivedImage] = []
        for number in range(1, self.max_rounds + 1):
            decision = await review_images(
                candidates,
                self.archive,
                prompt=prompt,
                round_no=number,
                max_rounds=self.max_rounds,
                timeout_seconds=self.timeout_seconds,
                on_timeout=self.on_timeout,
                check_prompt=check_prompt,
            )
            self.decisions.append(decision)
            shown += decision.candidates
            await self.log.add(decision, self.archive)
            if decision.new_prompt is None:
                break
            prompt = decision.new_prompt
            candidates = await again(prompt, number + 1)
        return shown
