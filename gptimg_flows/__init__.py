"""gptimg-flows: GPT Image 2 pipelines on Prefect, across five hosted providers and offline.

Public API (what users, deployments and docs rely on):
- blocks: OpenAIImageCredentials, ScenarioCredentials, RunwareCredentials,
  SkillsVideoCredentials, GptImage2AICredentials, ImageArchive, ProviderRoute (several of
  them as one provider: `provider=[...]` or a saved route)
- flows: generate_images, edit_image, generate_edit_archive, batch_generate, daily_content,
  distributed_batch (a big batch fanned out as chunk runs of a deployment)
- review: review_images (pause for a person's decision), ReviewInput (the Resume form)
- costs: estimate_cost, BudgetExceeded (max_cost on every flow)
- batches: RowsFailed (fail_on_row_failure=True and a row made no image)
- models: ImageRequest, EditRequest, ArchivedImage; errors in gptimg_flows.errors
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gptimg_flows.blocks.credentials import (
        GptImage2AICredentials,
        ImageArchive,
        OpenAIImageCredentials,
        RunwareCredentials,
        ScenarioCredentials,
        SkillsVideoCredentials,
    )
    from gptimg_flows.blocks.route import ProviderRoute
    from gptimg_flows.distributed.flow import distributed_batch
    from gptimg_flows.errors import BudgetExceeded
    from gptimg_flows.estimates import estimate_cost
    from gptimg_flows.flows import (
        batch_generate,
        daily_content,
        edit_image,
        generate_edit_archive,
        generate_images,
    )
    from gptimg_flows.models import ArchivedImage, EditRequest, ImageRequest, ReviewRecord
    from gptimg_flows.results import BatchResult, PipelineResult, ReviewRound, RowsFailed
    from gptimg_flows.review.pause import ReviewDecision, ReviewInput, review_images

#: Each public name and the module that holds it, imported on first use: `gptimg --help` and
#: `gptimg estimate` need none of Prefect's 2-3 s of imports. Prefect finds the blocks through
#: the `prefect.collections` entry point (gptimg_flows.blocks), and `prefect block register -m
#: gptimg_flows` through `dir()`, which lists these names.
_PUBLIC = {
    "GptImage2AICredentials": "gptimg_flows.blocks.credentials",
    "ImageArchive": "gptimg_flows.blocks.credentials",
    "OpenAIImageCredentials": "gptimg_flows.blocks.credentials",
    "RunwareCredentials": "gptimg_flows.blocks.credentials",
    "ScenarioCredentials": "gptimg_flows.blocks.credentials",
    "SkillsVideoCredentials": "gptimg_flows.blocks.credentials",
    "ProviderRoute": "gptimg_flows.blocks.route",
    "distributed_batch": "gptimg_flows.distributed.flow",
    "BudgetExceeded": "gptimg_flows.errors",
    "estimate_cost": "gptimg_flows.estimates",
    "batch_generate": "gptimg_flows.flows",
    "daily_content": "gptimg_flows.flows",
    "edit_image": "gptimg_flows.flows",
    "generate_edit_archive": "gptimg_flows.flows",
    "generate_images": "gptimg_flows.flows",
    "ArchivedImage": "gptimg_flows.models",
    "EditRequest": "gptimg_flows.models",
    "ImageRequest": "gptimg_flows.models",
    "ReviewRecord": "gptimg_flows.models",
    "BatchResult": "gptimg_flows.results",
    "PipelineResult": "gptimg_flows.results",
    "ReviewRound": "gptimg_flows.results",
    "RowsFailed": "gptimg_flows.results",
    "ReviewDecision": "gptimg_flows.review.pause",
    "ReviewInput": "gptimg_flows.review.pause",
    "review_images": "gptimg_flows.review.pause",
}


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'gptimg_flows' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))


__version__ = "0.1.0"

__all__ = [
    "ArchivedImage",
    "BatchResult",
    "BudgetExceeded",
    "EditRequest",
    "GptImage2AICredentials",
    "ImageArchive",
    "ImageRequest",
    "OpenAIImageCredentials",
    "PipelineResult",
    "ProviderRoute",
    "ReviewDecision",
    "ReviewInput",
    "ReviewRecord",
    "ReviewRound",
    "RowsFailed",
    "RunwareCredentials",
    "ScenarioCredentials",
    "SkillsVideoCredentials",
    "batch_generate",
    "daily_content",
    "distributed_batch",
    "edit_image",
    "estimate_cost",
    "generate_edit_archive",
    "generate_images",
    "review_images",
]
