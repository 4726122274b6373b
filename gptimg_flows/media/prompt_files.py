"""A batch's prompts, from a list or a prompt file read under the one read rule
(`media.reads`): a file whose name says its format, within a size cap, as UTF-8 text."""

from __future__ import annotations

from gptimg_flows.errors import InvalidRequest
from gptimg_flows.media.reads import ReadRules, read_bytes
from gptimg_flows.rows import PromptsParam, Row, prompt_format, rows_of_list, rows_of_text

#: A prompt file larger than this is refused (64 MiB is several hundred thousand rows).
MAX_PROMPT_FILE_BYTES = 64 * 1024 * 1024


def read_prompts(
    source: PromptsParam, rules: ReadRules | None = None, max_bytes: int = MAX_PROMPT_FILE_BYTES
) -> list[Row]:
    """Rows from a list (of prompts, or of dicts), or a JSONL / CSV / text file at a local
    path, a remote store or http(s), as `rules` allow."""
    if isinstance(source, list):
        return rows_of_list(source)
    prompt_format(source)  # before anything is read
    data, _ = read_bytes(source, "prompts", rules or ReadRules(), max_bytes)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(
            f"prompts: {source} is not UTF-8 text ({exc.reason})", field="prompts"
        ) from None
    return rows_of_text(source, text)
