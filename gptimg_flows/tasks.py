"""The step tasks users compose into their own flows, and the names their flows import from
here: the tasks live in `engine.steps`, the keys and records in `engine.records`, so this module
only gathers them (an import path users rely on, kept as it is)."""

from __future__ import annotations

from gptimg_flows.archive.layout import job_rel
from gptimg_flows.blocks.credentials import ProviderSpec, provider_of
from gptimg_flows.engine.records import KEY_VERSION, archived_result, job_recorded, request_key
from gptimg_flows.engine.retry_policy import RETRIES, RETRY_OPTIONS
from gptimg_flows.engine.steps import (
    archive_images,
    download_outputs,
    load_edit_inputs,
    make_images,
    make_images_for,
    run_job,
    submit_job,
    upload_inputs,
    wait_for_job,
)
from gptimg_flows.errors import SubmitUncertain

__all__ = [
    "KEY_VERSION",
    "RETRIES",
    "RETRY_OPTIONS",
    "ProviderSpec",
    "SubmitUncertain",
    "archive_images",
    "archived_result",
    "download_outputs",
    "job_recorded",
    "job_rel",
    "load_edit_inputs",
    "make_images",
    "make_images_for",
    "provider_of",
    "request_key",
    "run_job",
    "submit_job",
    "upload_inputs",
    "wait_for_job",
]
