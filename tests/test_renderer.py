import math

import torch

from engine.cameras import orbit_camera
from engine.field import VoxelField
from engine.renderer import ray_box_interval, render


def constant_field(density: float, bound: float = 0.5) -> VoxelField:
    field = VoxelField(16, 4, bound, blob_strength=0.0, density_shift=0.0)
    # softplus(logit) / voxel = density  =>  logit = log(exp(density * voxel) - 1)
    logit = math.log(math.expm1(density * field.voxel_size))
    with torch.no_grad():
        field.density.fill_(logit)
        field.features.fill_(0.25)
    return field


def test_constant_density_cube_gives_analytic_opacity_and_depth():
    density, bound, distance = 3.0, 0.5, 2.0
    field = constant_field(density, bound)
    camera = orbit_camera(0.0, 0.0, distance, 10.0)  # narrow view: every centre ray crosses the box
    out = render(field, camera, 4, 4, samples_per_ray=512)
    length = 2 * bound  # the centre rays run straight through the cube
    expected_opacity = 1 - math.exp(-density * length)
    assert abs(out.opacity[1:3, 1:3].mean().item() - expected_opacity) < 0.01
    # Expected termination distance of an exponential ray truncated to the slab [near, near + L].
    near = distance - bound
    mean_in_slab = 1 / density - length * math.exp(-density * length) / expected_opacity
    assert abs(out.depth[1:3, 1:3].mean().item() - (near + mean_in_slab)) < 0.02
    assert torch.allclose(out.features[:, 1:3, 1:3], torch.full((4, 2, 2), 0.25 * expected_opacity), atol=0.01)


def test_rays_that_miss_the_box_are_empty():
    near, far = ray_box_interval(torch.tensor([[0.0, -2.0, 2.0]]), torch.tensor([[0.0, 1.0, 0.0]]), 0.5)
    assert near.item() == far.item()
    field = constant_field(50.0, 0.5)
    out = render(field, orbit_camera(0.0, 0.0, 2.0, 90.0), 8, 8, samples_per_ray=32)
    assert out.opacity[0, 0] < 1e-6 and out.opacity[4, 4] > 0.99


def test_renderer_gradients_reach_the_grid():
    field = constant_field(2.0)
    out = render(field, orbit_camera(30.0, 20.0, 2.0, 40.0), 8, 8, samples_per_ray=32)
    out.features.sum().backward()
    for grid in (field.density, field.features):
        assert grid.grad is not None and grid.grad.abs().sum() > 0
