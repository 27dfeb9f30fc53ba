"""Dreamsmith engine: text-to-3D by score distillation from a frozen 2D latent diffusion prior.

The Python API the server (and scripts) call::

    from engine import load_prior, generate, GenerateConfig, write_outputs
    prior = load_prior()                      # the embedded Primitive World prior
    result = generate("a red cube", prior, GenerateConfig(seed=1), on_progress=print)
    write_outputs(result.mesh, "cube.glb")
"""

from .cameras import Camera, CameraConvention, orbit_camera
from .export import TexturedMesh
from .outputs import write_outputs
from .guidance import GuidanceConfig
from .prior import Prior, PriorError, PriorMetadata, load_prior
from .progress import CancelToken, Cancelled, Progress
from .tasks.generate import GenerateConfig, GenerateResult, generate

__all__ = [
    "Camera", "CameraConvention", "orbit_camera", "TexturedMesh", "write_outputs", "GuidanceConfig",
    "Prior", "PriorError", "PriorMetadata", "load_prior", "CancelToken", "Cancelled", "Progress",
    "GenerateConfig", "GenerateResult", "generate",
]

from .tasks.sketch import SketchConfig, sketch  # noqa: E402  (appended: Sketch-Shape guidance)

__all__ += ["SketchConfig", "sketch"]

from .meshes import MeshError, MeshInput, load_mesh, validate_mesh  # noqa: E402  (appended: Latent-Paint)
from .tasks.paint import PaintConfig, PaintResult, paint  # noqa: E402

__all__ += ["MeshError", "MeshInput", "load_mesh", "validate_mesh", "PaintConfig", "PaintResult", "paint"]
