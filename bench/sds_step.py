"""Cost of one score-distillation step against the prior U-Net's own CFG forward pass.

Both are timed in this one process, interleaved, so machine noise hits them alike; the figure that
matters is the ratio. Usage: python bench/sds_step.py [--model PATH] [--method sds|sjc] [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from engine.cli import config_or_exit
from engine.cpu_sharing import default_threads
from engine.prior import load_prior
from engine.tasks import preset_config
from engine.tasks.latent_field import FieldOptimisation


def device_sync(device: torch.device):
    # CUDA kernels run asynchronously: without a sync a timer measures the launch, not the work.
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def median_ms(fn, repeats: int, sync=lambda: None) -> tuple[float, float]:
    """Median wall and process-CPU milliseconds per call. CPU time is less disturbed by other
    processes on a busy machine; wall time is what a user waits."""
    wall, cpu = [], []
    for _ in range(repeats):
        sync()
        started_wall, started_cpu = time.perf_counter(), time.process_time()
        fn()
        sync()
        wall.append((time.perf_counter() - started_wall) * 1000)
        cpu.append((time.process_time() - started_cpu) * 1000)
    return statistics.median(wall), statistics.median(cpu)


def measure(prior, config, repeats: int = 30, rounds: int = 5, prompt: str = "a red cube") -> dict:
    """One SDS step of ``config`` (its steps set high, so every timed step is early in the
    schedule) against ``prior``'s batch-2 CFG forward, in ``rounds`` interleaved rounds of
    ``repeats`` calls each; the medians of the rounds' medians."""
    sync = device_sync(prior.device)
    run = FieldOptimisation(prompt, prior, config, torch.Generator().manual_seed(0))
    size = prior.metadata.latent_size
    latents = torch.randn(1, prior.latent_channels, size, size, device=prior.device)
    timestep = torch.tensor([500])
    cond, uncond = run.prompts.conditional["front"][None], run.prompts.unconditional[None]
    step_counter = iter(range(10**9))

    def unet_forward():
        prior.predict_noise(latents, timestep, cond, uncond, config.guidance.guidance_scale)

    def sds_step():
        run.step(next(step_counter))

    for _ in range(5):  # warm-up: allocator, thread pools, first-call dispatch, CUDA autotuning
        unet_forward()
        sds_step()
    unet_ms, step_ms = [], []
    for _ in range(rounds):  # interleave so drifting load affects both the same way
        unet_ms.append(median_ms(unet_forward, repeats, sync))
        step_ms.append(median_ms(sds_step, repeats, sync))
    unet_wall, unet_cpu = (statistics.median(column) for column in zip(*unet_ms))
    step_wall, step_cpu = (statistics.median(column) for column in zip(*step_ms))
    return {
        "prior": prior.metadata.name, "device": str(prior.device), "dtype": str(prior.dtype).replace("torch.", ""),
        "unet_parameters": sum(p.numel() for p in prior.unet.parameters()), "latent_size": size,
        "method": config.guidance.method, "grid_resolution": config.field.grid_resolution,
        "samples_per_ray": config.field.samples_per_ray, "threads": torch.get_num_threads(),
        "unet_cfg_forward_ms": unet_wall, "sds_step_ms": step_wall, "ratio": step_wall / unet_wall,
        "unet_cfg_forward_cpu_ms": unet_cpu, "sds_step_cpu_ms": step_cpu, "cpu_time_ratio": step_cpu / unet_cpu,
        "repeats": repeats, "rounds": rounds,
    }


def configure(preset: str, method: str):
    """``preset``'s GenerateConfig with guidance ``method``, its steps set high so that every timed step
    is early in the schedule."""
    return preset_config("generate", preset, {"steps": 10_000, "guidance.method": method})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", help="prior folder (default: the embedded prior)")
    parser.add_argument("--method", default="sds")
    parser.add_argument("--preset", default="standard")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=default_threads())
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    config = config_or_exit(parser, lambda: configure(args.preset, args.method))
    report = measure(load_prior(args.model, device=args.device), config, args.repeats,
                     args.rounds)
    print(json.dumps({key: round(value, 3) if isinstance(value, float) else value for key, value in report.items()},
                     indent=2))


if __name__ == "__main__":
    main()
