"""The files one generated asset becomes: GLB, OBJ+MTL+PNG and a turntable preview."""

from __future__ import annotations

from pathlib import Path

from .export import TexturedMesh, write_glb, write_obj, write_preview


def output_paths(glb_path: str | Path) -> dict[str, Path]:
    glb_path = Path(glb_path)
    return {
        "glb": glb_path,
        "obj": glb_path.with_suffix(".obj"),
        "preview": glb_path.with_name(f"{glb_path.stem}_preview.png"),
    }


def write_outputs(mesh: TexturedMesh, glb_path: str | Path) -> list[Path]:
    """Write the GLB, the OBJ with its MTL and texture PNG, and the turntable preview.

    Args:
        mesh: the textured mesh, Blender axes.
        glb_path: the GLB's path; the other files go beside it, named after it.

    Returns:
        Every file written, the GLB first and the preview last.
    """
    paths = output_paths(glb_path)
    write_glb(paths["glb"], mesh)
    obj_files = write_obj(paths["obj"], mesh)
    write_preview(paths["preview"], mesh)
    return [paths["glb"], *obj_files, paths["preview"]]
