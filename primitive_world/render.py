"""Fast vectorised ray caster for the analytic objects of Primitive World (CPU, torch).

Images follow the contract exactly: pinhole camera at distance 2.2 looking at the origin, up +Z,
vertical fov 40°, Lambert shading ``albedo·(0.40 + 0.60·max(0, n·l))``, white background, 4×4
supersampling box-filtered down to the output size.

Geometry does not depend on the colour, so the ray caster produces a colour-free
:class:`Geometry` (per output pixel: coverage, the box-filtered shading factor of the body and of
the door, and the door's coverage); :func:`colourise` turns it into an RGB image of any colour
exactly, because box filtering is linear:

    rgb = (1 - coverage)·background + albedo·body_shade + door_rgb·door_shade
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from engine.cameras import Camera, orbit_camera

from . import contract as C

_INF = float("inf")


# ---------------------------------------------------------------------------------------------
# cameras and rays
# ---------------------------------------------------------------------------------------------
def contract_camera(azimuth_deg: float, elevation_deg: float) -> Camera:
    """The contract's camera (distance 2.2, fov 40°) at this azimuth and elevation."""
    return orbit_camera(float(azimuth_deg), float(elevation_deg), C.CAMERA_DISTANCE, C.FOV_Y_DEG)


def _rays(cameras: Sequence[Camera], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Origins and unit directions (B·size·size, 3), float32, same convention as engine.cameras."""
    idx = (torch.arange(size, dtype=torch.float64) + 0.5) / size * 2 - 1
    rows = -idx
    out_o, out_d = [], []
    for cam in cameras:
        tan_half = math.tan(math.radians(cam.fov_y_deg) / 2)
        y, x = torch.meshgrid(rows * tan_half, idx * tan_half, indexing="ij")
        dirs = torch.stack([x, y, -torch.ones_like(x)], dim=-1).reshape(-1, 3)
        dirs = dirs @ torch.from_numpy(np.ascontiguousarray(cam.c2w[:3, :3])).T
        dirs = dirs / dirs.norm(dim=-1, keepdim=True)
        out_d.append(dirs)
        out_o.append(torch.from_numpy(np.ascontiguousarray(cam.position)).expand_as(dirs))
    return torch.cat(out_o).float(), torch.cat(out_d).float()


# ---------------------------------------------------------------------------------------------
# ray / primitive intersections; each returns (t, normal) with t = inf on a miss
# ---------------------------------------------------------------------------------------------
def _planes(normals, offsets) -> tuple[torch.Tensor, torch.Tensor]:
    n = torch.tensor(normals, dtype=torch.float64)
    c = torch.tensor(offsets, dtype=torch.float64)
    norm = n.norm(dim=-1)
    return (n / norm[:, None]).float(), (c / norm).float()


def _box_planes(lo, hi):
    return _planes(
        [(1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)],
        [hi[0], -lo[0], hi[1], -lo[1], hi[2], -lo[2]],
    )


def _hit_polytope(o, d, planes):
    """Convex polytope {p : n_k·p <= c_k}. Returns t, normal, index of the entry plane."""
    normals, offsets = planes
    nd = d @ normals.T
    no = o @ normals.T
    nd = torch.where(nd == 0, torch.full_like(nd, 1e-12), nd)
    t = (offsets - no) / nd
    t_enter, which = torch.where(nd < 0, t, torch.full_like(t, -_INF)).max(dim=1)
    t_exit = torch.where(nd > 0, t, torch.full_like(t, _INF)).min(dim=1).values
    hit = (t_enter <= t_exit) & (t_enter > 0)
    t_hit = torch.where(hit, t_enter, torch.full_like(t_enter, _INF))
    return t_hit, normals[which], which


def _hit_sphere(o, d, radius):
    b = (o * d).sum(-1)
    c = (o * o).sum(-1) - radius**2
    disc = b * b - c
    t = -b - torch.sqrt(disc.clamp(min=0))
    t = torch.where((disc >= 0) & (t > 0), t, torch.full_like(t, _INF))
    p = o + torch.nan_to_num(t, posinf=0.0)[:, None] * d
    return t, p / radius


def _nearest(*candidates):
    """Element-wise nearest of several (t, normal) candidates."""
    ts = torch.stack([t for t, _ in candidates], dim=1)
    t, which = ts.min(dim=1)
    normals = torch.stack([n for _, n in candidates], dim=1)
    return t, normals[torch.arange(len(t)), which]


def _valid(t, ok):
    return torch.where(ok & (t > 0), t, torch.full_like(t, _INF))


def _hit_cylinder(o, d, radius=C.CYLINDER["radius"], z0=C.CYLINDER["z"][0], z1=C.CYLINDER["z"][1]):
    a = d[:, 0] ** 2 + d[:, 1] ** 2
    b = o[:, 0] * d[:, 0] + o[:, 1] * d[:, 1]
    c = o[:, 0] ** 2 + o[:, 1] ** 2 - radius**2
    disc = b * b - a * c
    t_side = (-b - torch.sqrt(disc.clamp(min=0))) / a.clamp(min=1e-12)
    z = o[:, 2] + t_side * d[:, 2]
    t_side = _valid(t_side, (disc >= 0) & (a > 1e-12) & (z >= z0) & (z <= z1))
    p = o + torch.nan_to_num(t_side, posinf=0.0)[:, None] * d
    n_side = torch.stack([p[:, 0], p[:, 1], torch.zeros_like(p[:, 0])], -1) / radius
    caps = []
    dz = torch.where(d[:, 2] == 0, torch.full_like(d[:, 2], 1e-12), d[:, 2])
    for zc, nz in ((z1, 1.0), (z0, -1.0)):
        t = (zc - o[:, 2]) / dz
        q = o + t[:, None] * d
        t = _valid(t, q[:, 0] ** 2 + q[:, 1] ** 2 <= radius**2)
        caps.append((t, torch.tensor([0.0, 0.0, nz]).expand_as(o)))
    return _nearest((t_side, n_side), *caps)


def _hit_cone(o, d, base_radius=C.CONE["radius"], z0=C.CONE["z"][0], apex=C.CONE["z"][1]):
    k2 = (base_radius / (apex - z0)) ** 2
    w = apex - o[:, 2]
    a = d[:, 0] ** 2 + d[:, 1] ** 2 - k2 * d[:, 2] ** 2
    b = o[:, 0] * d[:, 0] + o[:, 1] * d[:, 1] + k2 * d[:, 2] * w
    c = o[:, 0] ** 2 + o[:, 1] ** 2 - k2 * w * w
    disc = b * b - a * c
    sq = torch.sqrt(disc.clamp(min=0))
    a_safe = torch.where(a.abs() < 1e-12, torch.full_like(a, 1e-12), a)
    sides = []
    for sign in (-1.0, 1.0):
        t = (-b + sign * sq) / a_safe
        z = o[:, 2] + t * d[:, 2]
        t = _valid(t, (disc >= 0) & (z >= z0) & (z <= apex))
        p = o + torch.nan_to_num(t, posinf=0.0)[:, None] * d
        n = torch.stack([p[:, 0], p[:, 1], k2 * (apex - p[:, 2])], -1)
        sides.append((t, n / n.norm(dim=-1, keepdim=True).clamp(min=1e-12)))
    dz = torch.where(d[:, 2] == 0, torch.full_like(d[:, 2], 1e-12), d[:, 2])
    t = (z0 - o[:, 2]) / dz
    q = o + t[:, None] * d
    t = _valid(t, q[:, 0] ** 2 + q[:, 1] ** 2 <= base_radius**2)
    base = (t, torch.tensor([0.0, 0.0, -1.0]).expand_as(o))
    return _nearest(*sides, base)


def _torus_sdf(p, major, minor):
    q = torch.sqrt(p[:, 0] ** 2 + p[:, 1] ** 2) - major
    return torch.sqrt(q * q + p[:, 2] ** 2) - minor


def _hit_torus(o, d, major=C.TORUS["major"], minor=C.TORUS["minor"], iterations=64, eps=1e-4):
    """Sphere tracing of the exact torus SDF, only for rays that hit its bounding sphere."""
    n_rays = o.shape[0]
    t_out = torch.full((n_rays,), _INF)
    n_out = torch.zeros(n_rays, 3)
    bound = major + minor + 1e-3
    b = (o * d).sum(-1)
    disc = b * b - ((o * o).sum(-1) - bound**2)
    idx = torch.nonzero(disc > 0).squeeze(1)
    if idx.numel() == 0:
        return t_out, n_out
    oo, dd = o[idx], d[idx]
    sq = torch.sqrt(disc[idx])
    t = (-b[idx] - sq).clamp(min=0)
    t_far = -b[idx] + sq
    for _ in range(iterations):
        t = t + _torus_sdf(oo + t[:, None] * dd, major, minor)
    p = oo + t[:, None] * dd
    hit = (_torus_sdf(p, major, minor) < eps * 20) & (t < t_far)
    rho = torch.sqrt(p[:, 0] ** 2 + p[:, 1] ** 2).clamp(min=1e-9)
    n = p - torch.stack([p[:, 0] / rho * major, p[:, 1] / rho * major, torch.zeros_like(rho)], -1)
    n = n / n.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    t_out[idx] = torch.where(hit, t, torch.full_like(t, _INF))
    n_out[idx] = n
    return t_out, n_out


def _pyramid_planes():
    """Base plane and four sides, each side through a base edge and the apex."""
    half, (z0, z1) = C.PYRAMID["side"] / 2, C.PYRAMID["z"]
    height = z1 - z0
    sides = [(height, 0, half), (-height, 0, half), (0, height, half), (0, -height, half)]
    return _planes([(0, 0, -1), *sides], [-z0] + [half * z1] * 4)


def _roof_planes():
    """The gable roof's prism: the body's x range, its top, and two slopes meeting at the ridge."""
    (x0, x1), (y0, y1), (_, top) = C.HOUSE_BODY["x"], C.HOUSE_BODY["y"], C.HOUSE_BODY["z"]
    rise, ridge = C.HOUSE_RIDGE_Z - top, C.HOUSE_RIDGE_Z
    return _planes([(1, 0, 0), (-1, 0, 0), (0, 0, -1), (0, rise, y1), (0, -rise, -y0)],
                   [x1, -x0, -top, y1 * ridge, -y0 * ridge])


_CUBE = _box_planes((-C.CUBE_SIDE / 2,) * 3, (C.CUBE_SIDE / 2,) * 3)
_PYRAMID = _pyramid_planes()
_HOUSE_BODY = _box_planes(*zip(C.HOUSE_BODY["x"], C.HOUSE_BODY["y"], C.HOUSE_BODY["z"]))
_HOUSE_FRONT_PLANE = 3  # index of the (0, -1, 0) plane in _box_planes
_HOUSE_ROOF = _roof_planes()
DOOR_X = C.HOUSE_DOOR["x"]
DOOR_Z = C.HOUSE_DOOR["z"]


def intersect(shape: str, o: torch.Tensor, d: torch.Tensor):
    """First hit of each ray with ``shape``: (t, unit outward normal, door mask)."""
    no_door = torch.zeros(o.shape[0], dtype=torch.bool)
    if shape == "cube":
        t, n, _ = _hit_polytope(o, d, _CUBE)
        return t, n, no_door
    if shape == "sphere":
        t, n = _hit_sphere(o, d, C.SPHERE_RADIUS)
        return t, n, no_door
    if shape == "cylinder":
        return (*_hit_cylinder(o, d), no_door)
    if shape == "cone":
        return (*_hit_cone(o, d), no_door)
    if shape == "torus":
        return (*_hit_torus(o, d), no_door)
    if shape == "pyramid":
        t, n, _ = _hit_polytope(o, d, _PYRAMID)
        return t, n, no_door
    if shape == "house":
        t_body, n_body, which = _hit_polytope(o, d, _HOUSE_BODY)
        t_roof, n_roof, _ = _hit_polytope(o, d, _HOUSE_ROOF)
        body_first = t_body <= t_roof
        t = torch.where(body_first, t_body, t_roof)
        n = torch.where(body_first[:, None], n_body, n_roof)
        p = o + torch.nan_to_num(t_body, posinf=0.0)[:, None] * d
        door = (
            body_first & torch.isfinite(t_body) & (which == _HOUSE_FRONT_PLANE)
            & (p[:, 0] >= DOOR_X[0]) & (p[:, 0] <= DOOR_X[1])
            & (p[:, 2] >= DOOR_Z[0]) & (p[:, 2] <= DOOR_Z[1])
        )
        return t, n, door
    raise ValueError(f"unknown shape {shape!r}; expected one of {C.SHAPES}")


# ---------------------------------------------------------------------------------------------
# images
# ---------------------------------------------------------------------------------------------
@dataclass
class Geometry:
    """Colour-free render of B views, each array (B, H, W) float32 in [0, 1]."""

    coverage: np.ndarray  # fraction of the pixel covered by the object (door included)
    body_shade: np.ndarray  # box-filtered shading factor over the non-door object part
    door_shade: np.ndarray  # box-filtered shading factor over the door
    door_coverage: np.ndarray  # fraction of the pixel covered by the door


def render_geometry(
    shape: str, cameras: Sequence[Camera], size: int = C.IMAGE_SIZE,
    supersample: int = C.SUPERSAMPLE, chunk: int = 8,
) -> Geometry:
    """Ray-cast ``shape`` from each camera at ``size·supersample`` squared rays, box-filter down."""
    cameras = list(cameras)
    light = torch.tensor(C.LIGHT_DIR, dtype=torch.float32)
    s = size * supersample
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("cov", "body", "door", "doorcov")}
    for start in range(0, len(cameras), chunk):
        cams = cameras[start:start + chunk]
        o, d = _rays(cams, s)
        with torch.no_grad():
            t, n, door = intersect(shape, o, d)
        hit = torch.isfinite(t)
        shade = C.shading((n * light).sum(-1)) * hit
        door = door & hit
        fields = {
            "cov": hit.float(),
            "body": shade * (~door),
            "door": shade * door,
            "doorcov": door.float(),
        }
        for key, value in fields.items():
            img = value.reshape(len(cams), 1, s, s)
            parts[key].append(torch.nn.functional.avg_pool2d(img, supersample)[:, 0])
    cat = {k: torch.cat(v).numpy().astype(np.float32) for k, v in parts.items()}
    return Geometry(cat["cov"], cat["body"], cat["door"], cat["doorcov"])


def colourise(geometry: Geometry, albedo, background=C.BACKGROUND_RGB) -> np.ndarray:
    """RGB images (B, H, W, 3) float32 in [0, 1] from a geometry and an albedo (or colour word)."""
    if isinstance(albedo, str):
        albedo = C.COLOURS[albedo]
    albedo = np.asarray(albedo, dtype=np.float32)
    bg = np.asarray(background, dtype=np.float32)
    door = np.asarray(C.DOOR_RGB, dtype=np.float32)
    return (
        (1.0 - geometry.coverage)[..., None] * bg
        + geometry.body_shade[..., None] * albedo
        + geometry.door_shade[..., None] * door
    ).astype(np.float32)


@dataclass
class Render:
    rgb: np.ndarray  # (H, W, 3) float32 in [0, 1]
    mask: np.ndarray  # (H, W) float32 coverage of the object
    door: np.ndarray  # (H, W) float32 coverage of the house's door (zero for other shapes)


def render(shape: str, colour, camera: Camera, size: int = C.IMAGE_SIZE,
           supersample: int = C.SUPERSAMPLE) -> Render:
    """One image of ``a {colour} {shape}`` seen from ``camera``."""
    g = render_geometry(shape, [camera], size, supersample)
    return Render(colourise(g, colour)[0], g.coverage[0], g.door_coverage[0])


def render_silhouettes(shape: str, cameras: Sequence[Camera], size: int = C.IMAGE_SIZE,
                       supersample: int = 2) -> np.ndarray:
    """(B, H, W) float32 coverage of ``shape`` from each camera."""
    return render_geometry(shape, cameras, size, supersample).coverage


def render_silhouette(shape: str, camera: Camera, size: int = C.IMAGE_SIZE,
                      supersample: int = 2) -> np.ndarray:
    """(H, W) float32 coverage in [0, 1]; threshold at 0.5 for a binary mask."""
    return render_silhouettes(shape, [camera], size, supersample)[0]
