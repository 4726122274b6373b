"""One request from submit to archive on the Prefect runtime: retry timing (retry), the
per-account rate limiter (rate_limiter, no Prefect) and its Prefect side (pacing), the shared
spend limit (spend_limit), the OpenAI Batch API's orchestration (batch_api), and what a run
shows in the UI (artifacts). Used by tasks.py and the flows, never the reverse."""
