"""The job settings the panel edits, stored per scene (they are saved with the .blend)."""

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty, StringProperty

from ._vendor import protocol

MODES = (
    ("GENERATE", "Generate", "Create a new textured object from the prompt", "ADD", 0),
    ("TEXTURE", "Texture Selected", "Paint a texture onto the selected mesh, keeping its shape", "TEXTURE", 1),
    ("SKETCH", "Sketch from Selected", "Use the selected mesh as a rough shape to refine", "MESH_ICOSPHERE", 2),
)
PRESET_LABELS = {"draft": ("Draft", "Fast, coarse result"), "standard": ("Standard", "Balanced time and quality"),
                 "high": ("High", "Slow, detailed result"),
                 "sd": ("Stable Diffusion", "For a Stable Diffusion model on a GPU: the published step counts")}
PRESETS = [(name.upper(), *PRESET_LABELS[name]) for name in protocol.PRESETS]


class DreamsmithSettings(bpy.types.PropertyGroup):
    mode: EnumProperty(name="Mode", items=MODES, default="GENERATE")
    prompt: StringProperty(name="Prompt", description="What to make", maxlen=protocol.MAX_PROMPT_CHARS)
    negative_prompt: StringProperty(name="Negative Prompt", description="What to steer away from",
                                    maxlen=protocol.MAX_PROMPT_CHARS)
    seed: IntProperty(name="Seed", description="The same seed and settings give the same result",
                      default=0, min=0)
    steps: IntProperty(name="Steps", description="Optimisation steps; 0 uses the quality preset's number",
                       default=0, min=0, max=protocol.MAX_STEPS)
    # 0 by default, like steps: each job kind's preset has its own scale (text-to-3D 100, paint 5 on
    # the embedded prior), and one panel default would override them all.
    guidance: FloatProperty(name="Guidance",
                            description="Classifier-free guidance scale; 0 uses the quality preset's scale",
                            default=0.0, min=0.0, max=protocol.GUIDANCE_RANGE[1])
    preset: EnumProperty(name="Quality", items=PRESETS, default="STANDARD")
    strict_prompt: BoolProperty(
        name="Strict Prompt",
        description="Refuse a prompt with words the model does not know; otherwise the job runs and the "
                    "panel names them",
        default=False)
    shaded_texture: BoolProperty(
        name="Shaded Texture",
        description="Keep the model's shading in the texture; otherwise the texture is albedo that "
                    "Blender lights, whenever the model knows its light",
        default=False)
    camera_collection: PointerProperty(
        name="Camera Rig", type=bpy.types.Collection,
        description="Send the cameras in this collection; empty sends the scene's active camera")

    def job_params(self) -> dict:
        """The submit params the protocol defines for every job kind."""
        params = {"prompt": self.prompt, "seed": self.seed, "preset": self.preset.lower()}
        if self.negative_prompt.strip():
            params["negative_prompt"] = self.negative_prompt
        if self.steps:
            params["steps"] = self.steps
        if self.guidance >= protocol.GUIDANCE_RANGE[0]:  # 0 (anything under the minimum): the preset's
            params["guidance_scale"] = self.guidance
        if self.strict_prompt:
            params["strict"] = True
        if self.shaded_texture:
            params["albedo"] = False
        return params


def get(context: bpy.types.Context) -> DreamsmithSettings:
    return context.scene.dreamsmith


classes = (DreamsmithSettings,)


def register() -> None:
    bpy.types.Scene.dreamsmith = PointerProperty(type=DreamsmithSettings)


def unregister() -> None:
    del bpy.types.Scene.dreamsmith
