"""Text that reads right (issue #34): the words a prompt quotes, read back from each image by an
embedded OCR engine and matched the way OCR's habits ask. No Prefect here: the engine's
`engine/text_checking.py` runs it for the flows."""

from gptimg_flows.textcheck.check import TextCheck, TextCheckMode, TextLine, check_image
from gptimg_flows.textcheck.expected import expected_lines, quoted
from gptimg_flows.textcheck.match import best_match, normalize
from gptimg_flows.textcheck.ocr import OCRMissing, engine_name, require_ocr

__all__ = [
    "OCRMissing",
    "TextCheck",
    "TextCheckMode",
    "TextLine",
    "best_match",
    "check_image",
    "engine_name",
    "expected_lines",
    "normalize",
    "quoted",
    "require_ocr",
]
