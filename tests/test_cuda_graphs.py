"""The captured-graph U-Net, with the capture replaced by one that calls the recorded function: the
buffer handling is what is tested here; the CUDA capture itself needs a GPU (bench/ measures it)."""

import pytest
import torch

from engine.cuda_graphs import GraphedUNet


class RecordingCapture:
    """Replays by calling the recorded function, as a CUDA graph replays its kernels on the same buffers."""

    def __init__(self):
        self.captures = 0

    def __call__(self, function):
        self.captures += 1
        output = function()

        def replay():
            output.copy_(function())

        return replay, output


def unet_inputs(tiny, batch: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    size = tiny.metadata.latent_size
    sample = torch.randn(batch, 4, size, size, generator=generator)
    text = tiny.encode_prompts(["a red cube"] * batch)
    return sample, torch.full((batch,), 500), text


def test_graphed_unet_gives_the_plain_unets_output_from_its_own_buffers(tiny):
    graphed = GraphedUNet(tiny.unet, capture=RecordingCapture())
    for seed in (0, 1):  # the second call replays with new inputs copied in
        sample, timestep, text = unet_inputs(tiny, 2, seed)
        expected = tiny.unet(sample, timestep, encoder_hidden_states=text).sample
        assert torch.allclose(graphed(sample, timestep, text).sample, expected, atol=1e-6)


def test_one_capture_per_input_shape_and_results_are_not_overwritten_by_the_next_replay(tiny):
    capture = RecordingCapture()
    graphed = GraphedUNet(tiny.unet, capture=capture)
    first = graphed(*unet_inputs(tiny, 2, 0)).sample
    kept = first.clone()
    graphed(*unet_inputs(tiny, 2, 1))
    assert capture.captures == 1 and torch.equal(first, kept)
    graphed(*unet_inputs(tiny, 3, 0))
    assert capture.captures == 2


def test_a_scalar_timestep_is_spread_over_the_batch_as_the_unet_does(tiny):
    graphed = GraphedUNet(tiny.unet, capture=RecordingCapture())
    sample, timestep, text = unet_inputs(tiny, 2, 0)
    assert torch.allclose(graphed(sample, torch.tensor(500), text).sample, graphed(sample, timestep, text).sample)


def test_asking_for_cuda_graphs_on_the_cpu_is_a_clear_error():
    from engine.prior import Prior, PriorError
    from engine.testing import tiny_components, tiny_metadata

    with pytest.raises(PriorError, match="CUDA graphs need a CUDA device"):
        Prior(*tiny_components(), metadata=tiny_metadata(), cuda_graphs=True)
