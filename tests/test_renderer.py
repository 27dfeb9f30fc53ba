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


def test_field_queries_split_over_threads_give_one_batch_values_and_gradients():
    import torch.nn.functional as F

    field = VoxelField(8, 4, 0.5)
    with torch.no_grad():
        field.density.normal_(generator=torch.Generator().manual_seed(0))
        field.features.normal_(generator=torch.Generator().manual_seed(1))
    points = (torch.rand(1001, 3, generator=torch.Generator().manual_seed(2)) * 2 - 1) * 0.5  # odd: padded
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        split = torch.cat([field.query_density(points)[:, None], field.query_features(points)], dim=1)
        split.pow(2).sum().backward()
    finally:
        torch.set_num_threads(threads)
    split_grads = [field.density.grad.clone(), field.features.grad.clone()]
    field.zero_grad()
    grid = (points / 0.5).view(1, 1, 1, -1, 3)

    def one(g):
        return F.grid_sample(g, grid, mode="bilinear", align_corners=True, padding_mode="border").view(g.shape[1], -1)

    whole = torch.cat([field.activate_density(one(field.density)).T, one(field.features).T], dim=1)
    whole.pow(2).sum().backward()
    assert torch.allclose(split, whole)
    for a, b in zip(split_grads, [field.density.grad, field.features.grad]):
        assert torch.allclose(a, b, atol=1e-5)
