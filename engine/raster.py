"""A vectorised CPU triangle rasteriser, consistent with ``engine.cameras``.

Screen space: pixel (row i, col j) has its centre at (x, y) = (j + 0.5, i + 0.5), x right, y down,
row 0 at the top -- exactly the coordinates ``cameras.project`` returns, so a ray from
``cameras.camera_rays`` through pixel (i, j) meets the surface at the point that projects to that
pixel's centre.  A pixel is covered when its centre lies inside (or on the edge of) a triangle.
Both windings are drawn (meshes may be open); triangles with any vertex behind the camera are
discarded; the nearest surface wins.

UV convention (shared with ``engine.export``; it is the OpenGL / trimesh one): the UV origin is
the bottom-left of the texture image.  u = 0 is the left column and v = 0 the bottom row of the
image array, so u maps to texel column u * W and v to texel row (1 - v) * H, where texel (r, c)
has its centre at (c + 0.5, r + 0.5).

How it works: every triangle's pixel bounding box is enumerated into (triangle, pixel) candidate
pairs (repeat / cumsum, chunked to bound memory), edge functions keep the pixels inside, and a
scatter-min on depth picks the nearest triangle per pixel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from engine.cameras import Camera, project


@dataclass(frozen=True)
class Lighting:
    """A Lambertian light fixed in the world: colour = albedo * (ambient + diffuse * max(0, n . l))."""
    direction: tuple[float, float, float] = (0.4, -0.6, 0.7)  # towards the light; normalised on use
    ambient: float = 0.4
    diffuse: float = 0.6

    def __post_init__(self) -> None:
        direction = np.asarray(self.direction, dtype=np.float64)
        if direction.shape != (3,) or not np.isfinite(direction).all() or not np.linalg.norm(direction) > 0:
            raise ValueError(f"a light direction is three finite numbers, not all zero; got {self.direction}")
        # Albedo divides by the shading, which is never less than the ambient term.
        if not (math.isfinite(self.ambient) and self.ambient > 0 and math.isfinite(self.diffuse)
                and self.diffuse >= 0):
            raise ValueError(f"lighting needs ambient > 0 and diffuse >= 0; got {self.ambient}, {self.diffuse}")

    def shade(self, normals: np.ndarray) -> np.ndarray:
        """(N,) shading factors of unit normals (N, 3)."""
        light = np.asarray(self.direction, dtype=np.float64)
        return self.ambient + self.diffuse * np.maximum(normals @ (light / np.linalg.norm(light)), 0.0)

    @classmethod
    def from_dict(cls, data: dict) -> "Lighting":
        return cls(tuple(float(c) for c in data["direction"]), float(data["ambient"]), float(data["diffuse"]))

    def to_dict(self) -> dict:
        return {"direction": list(self.direction), "ambient": self.ambient, "diffuse": self.diffuse}


# Front, right and above: the light of previews (and of Primitive World's images).
PREVIEW_LIGHTING = Lighting()

# Triangles closer than this to the camera plane (in view depth) count as behind it.
NEAR_DEPTH = 1e-6
# Upper bound on (triangle, pixel) candidate pairs held at once; each costs ~200 bytes.
MAX_CANDIDATES_PER_CHUNK = 1_000_000
# Triangles with a smaller doubled screen area (px^2) are slivers with unstable barycentrics.
MIN_DOUBLE_AREA = 1e-12


@dataclass
class Fragments:
    face_id: np.ndarray  # (H, W) int64, -1 where nothing was drawn
    bary: np.ndarray  # (H, W, 3) float32, perspective-correct barycentrics of face_id's corners
    depth: np.ndarray  # (H, W) float32 view depth, inf where nothing was drawn

    @property
    def mask(self) -> np.ndarray:
        return self.face_id >= 0


def rasterize(vertices: np.ndarray, faces: np.ndarray, camera: Camera, width: int, height: int) -> Fragments:
    """Rasterise a triangle mesh seen from ``camera`` into a ``height x width`` image."""
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    screen, depth = project(vertices, camera, width, height)
    in_front = np.all(depth[faces] > NEAR_DEPTH, axis=1)
    return rasterize_screen(screen[faces], depth[faces], width, height, face_ok=in_front)


def rasterize_screen(
    corner_xy: np.ndarray,
    corner_depth: np.ndarray,
    width: int,
    height: int,
    face_ok: np.ndarray | None = None,
) -> Fragments:
    """Rasterise triangles already in pixel coordinates.

    ``corner_xy`` is (F, 3, 2) pixel coordinates (x right, y down) and ``corner_depth`` (F, 3) the
    view depth of each corner; barycentrics are corrected for perspective with it (pass ones for
    an affine mapping such as UV space).  Faces where ``face_ok`` is False are skipped.
    """
    corner_xy = np.asarray(corner_xy, dtype=np.float64)
    inverse_depth = 1.0 / np.asarray(corner_depth, dtype=np.float64)
    buffers = _DepthBuffers(width * height)

    plane, drawable = _barycentric_planes(corner_xy)
    if face_ok is not None:
        drawable &= np.asarray(face_ok, dtype=bool)
    col_lo, col_hi, row_lo, row_hi = _pixel_bounds(corner_xy, width, height)
    box_width = np.maximum(col_hi - col_lo + 1, 0)
    counts = box_width * np.maximum(row_hi - row_lo + 1, 0) * drawable
    for face_ids in _chunks_of_faces(counts):
        face, col, row = _candidate_pixels(face_ids, counts, col_lo, row_lo, box_width)
        bary, depth = _perspective_barycentrics(plane[face], inverse_depth[face], col, row)
        inside = np.all(bary >= 0, axis=1)
        pixel = row[inside] * width + col[inside]
        buffers.keep_nearest(pixel, depth[inside], face[inside], bary[inside])

    return Fragments(
        face_id=buffers.face.reshape(height, width),
        bary=buffers.bary.reshape(height, width, 3).astype(np.float32),
        depth=buffers.depth.reshape(height, width).astype(np.float32),
    )


def _barycentric_planes(corner_xy: np.ndarray):
    """Per face, (F, 3, 3) coefficients (a, b, c) with screen barycentric b_k = a x + b y + c.

    They are edge functions divided by the signed area, so all three are non-negative inside a
    triangle of either winding.  Also returns which faces have a usable (non-degenerate) area.
    """
    x, y = corner_xy[..., 0], corner_xy[..., 1]
    # Barycentric k is the edge function of the edge opposite corner k.
    x_from, y_from = np.roll(x, -1, axis=1), np.roll(y, -1, axis=1)
    x_to, y_to = np.roll(x, -2, axis=1), np.roll(y, -2, axis=1)
    a = y_from - y_to
    b = x_to - x_from
    c = x_from * y_to - x_to * y_from
    double_area = (x[:, 1] - x[:, 0]) * (y[:, 2] - y[:, 0]) - (x[:, 2] - x[:, 0]) * (y[:, 1] - y[:, 0])
    drawable = np.abs(double_area) > MIN_DOUBLE_AREA
    safe_area = np.where(drawable, double_area, 1.0)[:, None, None]
    return np.stack([a, b, c], axis=2) / safe_area, drawable


def _pixel_bounds(corner_xy: np.ndarray, width: int, height: int):
    """Inclusive column/row ranges whose pixel centres can fall inside each triangle."""
    lo = corner_xy.min(axis=1)
    hi = corner_xy.max(axis=1)
    # Pixel centre c + 0.5 lies in [lo, hi] for ceil(lo - 0.5) <= c <= floor(hi - 0.5).
    col_lo = np.clip(np.ceil(lo[:, 0] - 0.5), 0, width).astype(np.int64)
    col_hi = np.clip(np.floor(hi[:, 0] - 0.5), -1, width - 1).astype(np.int64)
    row_lo = np.clip(np.ceil(lo[:, 1] - 0.5), 0, height).astype(np.int64)
    row_hi = np.clip(np.floor(hi[:, 1] - 0.5), -1, height - 1).astype(np.int64)
    return col_lo, col_hi, row_lo, row_hi


def _chunks_of_faces(counts: np.ndarray):
    """Yield consecutive face-id ranges whose candidate counts sum to about the chunk budget."""
    ends = np.cumsum(counts)
    start = 0
    while start < len(counts):
        already = int(ends[start - 1]) if start > 0 else 0
        # A single huge triangle may exceed the budget on its own; it still gets its own chunk.
        stop = int(np.searchsorted(ends, already + MAX_CANDIDATES_PER_CHUNK, side="right"))
        stop = max(stop, start + 1)
        if int(ends[stop - 1]) > already:
            yield np.arange(start, stop)
        start = stop


def _candidate_pixels(face_ids, counts, col_lo, row_lo, box_width):
    """Every (face, col, row) in the bounding boxes of ``face_ids``, as flat int64 arrays."""
    chunk_counts = counts[face_ids]
    face = np.repeat(face_ids, chunk_counts)
    first = np.cumsum(chunk_counts) - chunk_counts
    offset = np.arange(len(face)) - np.repeat(first, chunk_counts)
    widths = box_width[face]
    return face, col_lo[face] + offset % widths, row_lo[face] + offset // widths


def _perspective_barycentrics(plane, inverse_depth, col, row):
    """Barycentrics of the 3D point seen at each pixel centre, and its view depth.

    1/depth is affine in screen space, so screen barycentrics weighted by 1/z_k and renormalised
    are the barycentrics of the 3D point.  Outside a triangle some come out negative.
    """
    px = (col + 0.5)[:, None]
    py = (row + 0.5)[:, None]
    screen_bary = plane[..., 0] * px + plane[..., 1] * py + plane[..., 2]
    weights = screen_bary * inverse_depth
    depth = 1.0 / weights.sum(axis=1)
    return weights * depth[:, None], depth


class _DepthBuffers:
    """Per-pixel nearest fragment so far; nearest depth wins, ties go to the lower face id.

    Depth and face id are packed into one int64 key (float32 depth bits high, face id low) so a
    single unbuffered minimum settles both.  Positive float32s order like their bit patterns.
    """

    def __init__(self, num_pixels: int):
        self.key = np.full(num_pixels, np.iinfo(np.int64).max, dtype=np.int64)
        self.face = np.full(num_pixels, -1, dtype=np.int64)
        self.depth = np.full(num_pixels, np.inf)
        self.bary = np.zeros((num_pixels, 3))

    def keep_nearest(self, pixel, depth, face, bary) -> None:
        depth_bits = np.maximum(depth, 0.0).astype(np.float32).view(np.int32).astype(np.int64)
        key = (depth_bits << 32) | face
        np.minimum.at(self.key, pixel, key)
        # (face, pixel) pairs are unique, so exactly the winning candidate matches its pixel's key.
        won = key == self.key[pixel]
        pixel = pixel[won]
        self.face[pixel] = face[won]
        self.depth[pixel] = depth[won]
        self.bary[pixel] = bary[won]


def _face_cross(corners: np.ndarray) -> np.ndarray:
    """(F, 3) face normals of triangle ``corners`` (F, 3, 3), scaled by twice the face's area."""
    return np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Unit area-weighted vertex normals, shared by vertices at the same position.

    Welding by position keeps UV-seam duplicates (xatlas splits) from getting different normals,
    which would show the seams in shading.
    """
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    _, welded = np.unique(vertices, axis=0, return_inverse=True)
    welded = welded.reshape(-1)
    face_normals = _face_cross(vertices[faces])
    sums = np.zeros((welded.max() + 1, 3))
    for k in range(3):
        np.add.at(sums, welded[faces[:, k]], face_normals)
    normals = sums[welded]
    return normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)


def sample_bilinear(texture: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Texture colours in [0, 1] at (N, 2) UVs (bottom-left origin), clamped at the edges."""
    image = _as_float_image(texture)
    tex_h, tex_w = image.shape[:2]
    uv = np.asarray(uv, dtype=np.float64)
    return sample_pixels(image, np.stack([uv[:, 0] * tex_w, (1.0 - uv[:, 1]) * tex_h], axis=1))


def sample_pixels(image: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Bilinear samples (N, C) float64 of an (H, W, C) image at continuous pixel coordinates (N, 2),
    x right and y down, pixel centres at +0.5; beyond the outermost centres, the edge's colour."""
    coords = np.stack([xy[:, 1] - 0.5, xy[:, 0] - 0.5])
    return np.stack([ndimage.map_coordinates(image[..., channel], coords, output=np.float64, order=1,
                                             mode="nearest") for channel in range(image.shape[2])], axis=-1)


def _as_float_image(texture: np.ndarray) -> np.ndarray:
    texture = np.asarray(texture)
    if texture.dtype == np.uint8:
        return texture[..., :3].astype(np.float32) / 255.0
    return texture[..., :3].astype(np.float32)


def render_textured(
    vertices: np.ndarray,
    faces: np.ndarray,
    uvs: np.ndarray,
    texture: np.ndarray,
    camera: Camera,
    width: int,
    height: int,
    shading: bool | Lighting | None = True,
    background: tuple[float, float, float] = (1.0, 1.0, 1.0),
    ssaa: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Render a textured mesh: (rgb (H, W, 3) in [0, 1] over ``background``, alpha (H, W)).

    ``uvs`` is per corner (F, 3, 2) or per vertex (V, 2).  ``shading``: a ``Lighting`` lights the
    albedo, True means ``PREVIEW_LIGHTING`` (albedo * (0.4 + 0.6 * max(0, n . l)),
    l = normalize(0.4, -0.6, 0.7)), False or None shows the albedo as is.  ``ssaa`` renders ``ssaa`` times
    larger and box-filters down, which antialiases silhouettes.
    """
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    corner_uvs = _corner_uvs(uvs, faces)
    fragments = rasterize(vertices, faces, camera, width * ssaa, height * ssaa)
    covered = fragments.mask
    face = fragments.face_id[covered]
    bary = fragments.bary[covered].astype(np.float64)
    uv = np.einsum("nk,nkc->nc", bary, corner_uvs[face])
    colour = sample_bilinear(texture, uv)
    if shading:
        lighting = PREVIEW_LIGHTING if shading is True else shading
        colour = colour * _lambert(vertices, faces, face, bary, camera, lighting)[:, None]
    rgb = np.empty(covered.shape + (3,), dtype=np.float32)
    rgb[:] = np.asarray(background, dtype=np.float32)
    rgb[covered] = np.clip(colour, 0.0, 1.0)
    alpha = covered.astype(np.float32)
    return _box_downsample(rgb, ssaa), _box_downsample(alpha, ssaa)


def _corner_uvs(uvs: np.ndarray, faces: np.ndarray) -> np.ndarray:
    uvs = np.asarray(uvs, dtype=np.float64)
    if uvs.ndim == 3:
        return uvs
    return uvs[faces]


def _lambert(vertices, faces, face, bary, camera: Camera, lighting: Lighting) -> np.ndarray:
    """Ambient + diffuse factor per fragment, from interpolated vertex normals."""
    corners = vertices[faces[face]]
    normal = np.einsum("nk,nkc->nc", bary, vertex_normals(vertices, faces)[faces[face]])
    normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-12)
    # Open meshes show their back faces; light those as if they were the outside.  The face's own
    # normal decides, since interpolated normals tilt away from the camera near silhouettes.
    seen_from_behind = np.einsum("nc,nc->n", _face_cross(corners), corners[:, 0] - camera.position) > 0
    normal[seen_from_behind] *= -1
    return lighting.shade(normal)


def _box_downsample(image: np.ndarray, factor: int) -> np.ndarray:
    if factor == 1:
        return image
    height, width = image.shape[0] // factor, image.shape[1] // factor
    blocks = image.reshape(height, factor, width, factor, *image.shape[2:])
    return blocks.mean(axis=(1, 3)).astype(np.float32)


def render_silhouette(
    vertices: np.ndarray, faces: np.ndarray, camera: Camera, width: int, height: int, ssaa: int = 1
) -> np.ndarray:
    """Fraction of each pixel covered by the mesh, (H, W) float32 (binary when ``ssaa`` is 1)."""
    fragments = rasterize(vertices, faces, camera, width * ssaa, height * ssaa)
    return _box_downsample(fragments.mask.astype(np.float32), ssaa)
