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
