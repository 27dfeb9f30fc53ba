"""The one place where Blender axes and glTF axes meet.

Inside the engine everything is in Blender axes: +Z up, an object's front faces -Y, metres.
GLB and OBJ files use glTF axes: +Y up, front faces +Z.  The map (x, y, z) -> (x, z, -y) is a
proper rotation (-90 degrees about X), so it keeps triangle winding and also maps normals.
"""

from __future__ import annotations

import numpy as np

# Rows are the glTF axes written in Blender coordinates.
_BLENDER_TO_GLTF = np.array(
    [
        [1.0, 0.0, 0.0],
        [0.0, 0.0, 1.0],
        [0.0, -1.0, 0.0],
    ]
)


def blender_to_gltf(points: np.ndarray) -> np.ndarray:
    """(N, 3) points or normals in Blender axes -> glTF axes: (x, y, z) -> (x, z, -y)."""
    points = np.asarray(points)
    return (points @ _BLENDER_TO_GLTF.T).astype(points.dtype, copy=False)


def gltf_to_blender(points: np.ndarray) -> np.ndarray:
    """(N, 3) points or normals in glTF axes -> Blender axes: (x, y, z) -> (x, -z, y)."""
    points = np.asarray(points)
    # A rotation's inverse is its transpose.
    return (points @ _BLENDER_TO_GLTF).astype(points.dtype, copy=False)
