"""gptimg-flows: GPT Image 2 pipelines on Prefect, across five hosted providers and offline.

Public API (what users, deployments and docs rely on):
- blocks: OpenAIImageCredentials, ScenarioCredentials, RunwareCredentials,
  SkillsVideoCredentials, GptImage2AICredentials, ImageArchive
- flows: generate_images, edit_image, generate_edit_archive, batch_generate, daily_content,
  distributed_batch (a big batch fanned out as chunk runs of a deployment)
- review: review_images (pause for a person's decision), ReviewInput (the Resume form)
- costs: estimate_cost, BudgetExceeded (max_cost on every flow)
- models: ImageRequest, EditRequest, ArchivedImage; errors in gptimg_flows.errors
"""

from __future__ import annotations

from .blocks import (
    GptImage2AICredentials,
    ImageArchive,
    OpenAIImageCredentials,
    RunwareCredentials,
    ScenarioCredentials,
    SkillsVideoCredentials,
)
from .distributed import distributed_batch
from .errors import BudgetExceeded
from .estimates import estimate_cost
from .flows import (
    batch_generate,
    daily_content,
    edit_image,
    generate_edit_archive,
    generate_images,
)
from .models import ArchivedImage, EditRequest, ImageRequest, ReviewRecord
from .results import BatchResult, PipelineResult, ReviewRound
from .review import ReviewDecision, ReviewInput, review_images

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
    "ReviewDecision",
    "ReviewInput",
    "ReviewRecord",
    "ReviewRound",
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
