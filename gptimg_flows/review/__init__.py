"""A person approves candidates before the next paid step: pause or suspend with the Resume
form (pause), and telling someone a run waits (notify)."""

from gptimg_flows.review.pause import ReviewDecision, ReviewInput, review_images

__all__ = ["ReviewDecision", "ReviewInput", "review_images"]
