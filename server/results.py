"""Finished results on disk, one folder per job, committed atomically so a crash never leaves half a result.

``<results>/<job_id>/`` holds ``model.glb`` (engine.export.write_glb), ``preview.png`` and ``mesh.npz``
(the mesh arrays and the texture PNG exactly as they are sent, so fetching is reading files).
"""

from __future__ import annotations

import io
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.export import TexturedMesh, write_glb

from .protocol import RESULT_FRAMES, bytes_array, cast_frames, encode_png

log = logging.getLogger(__name__)

GLB_NAME, PREVIEW_NAME, ARRAYS_NAME = "model.glb", "preview.png", "mesh.npz"
MESH_ARRAYS = ("vertices", "faces", "uvs", "texture_png")


@dataclass
class JobOutput:
    """What a finished job hands to the store: an engine TexturedMesh and a small preview picture."""

    mesh: TexturedMesh
    preview: np.ndarray


class ResultStore:
    def __init__(self, folder: Path):
        self.folder = folder

    def glb_path(self, job_id: str) -> Path:
        return self.folder / job_id / GLB_NAME

    def commit(self, job_id: str, output: JobOutput) -> None:
        """Write to a temporary folder, fsync every file, rename the folder into place, fsync the parent."""
        staging = self.folder / f".staging-{job_id}"
        shutil.rmtree(staging, ignore_errors=True)  # left by a crash in this very step
        staging.mkdir()
        mesh = output.mesh
        write_glb(staging / GLB_NAME, mesh)
        (staging / PREVIEW_NAME).write_bytes(encode_png(output.preview))
        buffer = io.BytesIO()
        # Stored in the dtypes the result message carries, whatever dtypes a task hands back.
        np.savez(buffer, **cast_frames({"vertices": mesh.vertices, "faces": mesh.faces, "uvs": mesh.uvs},
                                       RESULT_FRAMES), texture_png=bytes_array(encode_png(mesh.texture)))
        (staging / ARRAYS_NAME).write_bytes(buffer.getvalue())
        for name in (GLB_NAME, PREVIEW_NAME, ARRAYS_NAME):
            _fsync(staging / name)
        _fsync(staging)
        os.replace(staging, self.folder / job_id)
        _fsync(self.folder)
        log.debug("committed the result of job %s", job_id)

    def read(self, job_id: str) -> dict[str, np.ndarray] | None:
        """The arrays of a result message, or None when the files are gone."""
        folder = self.folder / job_id
        try:
            with np.load(folder / ARRAYS_NAME, allow_pickle=False) as stored:
                arrays = {name: stored[name] for name in MESH_ARRAYS}
            arrays["preview_png"] = bytes_array((folder / PREVIEW_NAME).read_bytes())
            arrays["glb"] = bytes_array((folder / GLB_NAME).read_bytes())
        except (OSError, KeyError, ValueError) as error:
            log.warning("the result files of job %s cannot be read: %s", job_id, error)
            return None
        return arrays


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
