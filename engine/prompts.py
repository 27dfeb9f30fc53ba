"""View-dependent prompts (DreamFusion section 3, SJC appendix): the text follows the camera; and
the check of a prompt's words against the prior's vocabulary."""

from __future__ import annotations

import logging

import torch

from .cameras import Camera, view_label
from .prior import WORD, Prior, PromptReader

log = logging.getLogger(__name__)

VIEWS = ("front", "side", "back", "overhead")
# The view whose features must not show up in a view (Perp-Neg's negative): the back of a house has
# no door. Side and overhead views see both halves, so they have none.
OPPOSITE_VIEWS = {"front": "back", "back": "front"}
# The config settings that hold prompts, and how messages name them.
PROMPT_FIELDS = {"prompt": "the prompt", "negative_prompt": "the negative prompt"}
# A word-level vocabulary can be large; a message lists this many of its words, then a count.
KNOWN_WORDS_LISTED = 100


class PromptError(ValueError):
    """A prompt the engine will not run: empty, or (strict) with words the prior does not know.
    ``field`` is the setting it came from: "prompt" or "negative_prompt"."""

    def __init__(self, message: str, field: str = "prompt"):
        super().__init__(message)
        self.field = field


def check_words(prior: PromptReader, prompt: str, negative: str = "", strict: bool = False) -> list[str]:
    """What to tell the user about words the prior's tokenizer does not know (it reads each as
    [UNK], so "a wooden chair" would run as "a [UNK] [UNK]"): one message per prompt that has any,
    naming them and listing the words the prior knows. Nothing for a subword tokenizer (Stable
    Diffusion's), which knows every word.

    Args:
        prior: the prior (or its ``PromptReader``) whose tokenizer reads the prompts.
        prompt: the prompt as the user wrote it.
        negative: the negative prompt.
        strict: refuse instead of warning.

    Raises:
        PromptError: ``strict``, and a prompt has a word the prior does not know.
    """
    messages = []
    for field, text in (("prompt", prompt), ("negative_prompt", negative)):
        words = prior.unknown_words(text)
        if not words:
            continue
        message = (f"{PROMPT_FIELDS[field]} {text!r} has words the prior does not know, which it reads as "
                   f"{prior.tokenizer.unk_token}: {', '.join(words)}. It knows: {_known_words(prior)}")
        if strict:
            raise PromptError(message, field)
        messages.append(message)
    return messages


def _known_words(prior: PromptReader) -> str:
    words = [token for token in prior.vocabulary if WORD.fullmatch(token)]  # not its punctuation
    more = len(words) - KNOWN_WORDS_LISTED
    return ", ".join(words[:KNOWN_WORDS_LISTED]) + (f" and {more} more" if more > 0 else "")


class ViewPrompts:
    """Text embeddings of a prompt for each view, plus the negative (unconditional) embedding."""

    def __init__(self, prior: Prior, prompt: str, negative: str = "", view_dependent: bool = True):
        self.prior = prior
        self.prompt = prompt
        self.view_dependent = view_dependent
        for text in (prompt, negative):
            count = prior.prompt_token_count(text)
            if count > prior.max_prompt_tokens:
                log.warning("prompt %r has %d tokens; the prior's tokenizer takes %d, the rest is dropped",
                            text, count, prior.max_prompt_tokens)
        template = prior.metadata.view_prompt
        self.texts = {view: template.format(prompt=prompt, view=view) if view_dependent else prompt
                      for view in VIEWS}
        embeddings = prior.encode_prompts([self.texts[v] for v in VIEWS] + [negative])
        self.conditional = dict(zip(VIEWS, embeddings[:-1]))
        self.unconditional = embeddings[-1]

    def view(self, camera: Camera) -> str:
        return view_label(camera.azimuth_deg, camera.elevation_deg, self.prior.metadata.camera.overhead_elevation_deg)

    def for_camera_with_opposite(self, camera: Camera) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The embedding of the camera's view, and that of the view facing the other way, or None
        (no view prompts, or no opposite): one view lookup for both, once per optimisation step."""
        view = self.view(camera)
        opposite = OPPOSITE_VIEWS.get(view) if self.view_dependent else None
        return self.conditional[view], None if opposite is None else self.conditional[opposite]

    def opposite_for_camera(self, camera: Camera) -> torch.Tensor | None:
        return self.for_camera_with_opposite(camera)[1]
