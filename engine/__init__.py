"""Dreamsmith engine: text-to-3D, Latent-Paint and Sketch-Shape by score distillation from a frozen
2D latent diffusion prior.

The Python API the server (and scripts) call::

    from engine import load_prior, generate, paint, sketch, load_mesh, GenerateConfig, write_outputs
    prior = load_prior()                      # the embedded Primitive World prior
    result = generate("a red cube", prior, GenerateConfig(seed=1), on_progress=print)
    write_outputs(result.mesh, "cube.glb")
    painted = paint(load_mesh("chair.obj"), "a red cube", prior)
"""

# First: OpenMP reads its wait policy when torch loads it (engine.cpu_sharing).
from . import cpu_sharing  # noqa: F401
from .cameras import Camera, CameraConvention, orbit_camera
from .export import TexturedMesh
from .guidance import GuidanceConfig
from .meshes import MeshError, MeshInput, load_mesh, validate_mesh
from .outputs import write_outputs
from .prior import Prior, PriorError, PriorMetadata, PromptReader, load_prior, load_prompt_reader
from .progress import Cancelled, CancelToken, Progress
from .prompts import PromptError
from .tasks import TASKS, preset_config
from .tasks.generate import GenerateConfig, GenerateResult, generate
from .tasks.paint import PaintConfig, PaintResult, paint
from .tasks.sketch import SketchConfig, sketch

__all__ = [
    "Camera", "CameraConvention", "orbit_camera", "TexturedMesh", "write_outputs", "GuidanceConfig",
    "Prior", "PriorError", "PriorMetadata", "PromptReader", "load_prior", "load_prompt_reader",
    "CancelToken", "Cancelled", "Progress", "PromptError",
    "MeshError", "MeshInput", "load_mesh", "validate_mesh",
    "GenerateConfig", "GenerateResult", "generate", "PaintConfig", "PaintResult", "paint",
    "SketchConfig", "sketch", "TASKS", "preset_config",
]
