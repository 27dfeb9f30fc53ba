"""View-dependent prompts (DreamFusion section 3, SJC appendix): the text follows the camera."""

from __future__ import annotations

import logging

import torch

from .cameras import Camera, view_label
from .prior import Prior

log = logging.getLogger(__name__)

VIEWS = ("front", "side", "back", "overhead")
# The view whose features must not show up in a view (Perp-Neg's negative): the back of a house has
# no door. Side and overhead views see both halves, so they have none.
OPPOSITE_VIEWS = {"front": "back", "back": "front"}


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
