"""Prefect blocks: the providers' credentials and the image archive (credentials), blocks made
from the environment (from_env), and what a flow's `provider=` / `archive=` name (resolve).
Every name of `gptimg_flows.blocks` users rely on is here."""

from gptimg_flows.blocks.credentials import (
    CREDENTIAL_BLOCKS,
    GptImage2AICredentials,
    ImageArchive,
    OpenAIImageCredentials,
    ProviderCredentials,
    RunwareCredentials,
    ScenarioCredentials,
    SkillsVideoCredentials,
    offline_provider,
)
from gptimg_flows.blocks.route import ProviderRoute

__all__ = [
    "CREDENTIAL_BLOCKS",
    "GptImage2AICredentials",
    "ImageArchive",
    "OpenAIImageCredentials",
    "ProviderCredentials",
    "ProviderRoute",
    "RunwareCredentials",
    "ScenarioCredentials",
    "SkillsVideoCredentials",
    "offline_provider",
]
