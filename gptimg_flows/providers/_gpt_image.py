"""What GPT Image 2 itself allows, whoever sells it: the pixel rules of its sizes (OpenAI's
documented bounds, which the resellers pass through), and its qualities and backgrounds. An
adapter builds its Capabilities from these and narrows only what its own API narrows, so a
change of the model's rules is made here once."""

from __future__ import annotations

#: Both sides are multiples of this, within MIN_SIDE..MAX_SIDE pixels.
MULTIPLE_OF = 16
MIN_SIDE = 16
MAX_SIDE = 3840
#: At most this many pixels in all (3840x2160).
MAX_PIXELS = 8_294_400
#: The long side is at most 3 times the short one.
RATIO_BOUNDS = (1 / 3, 3.0)
QUALITIES = ("auto", "low", "medium", "high")
BACKGROUNDS = ("auto", "transparent", "opaque")
