"""The noise schedule, the samplers and the one denoising loop, against diffusers' schedulers
(what the authors sample with), on PyTorch tensors and NumPy arrays."""

import json

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

from moebius.errors import ConfigError
from moebius.sampling import (
    Cancelled,
    DDIMSampler,
    DPMSolverSampler,
    NoiseSchedule,
    denoise,
    guided,
    initial_latents,
    make_sampler,
)


def diffusers_ddim() -> DDIMScheduler:
    return DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False
    )


def test_schedule_table_is_diffusers_bit_for_bit():
    np.testing.assert_array_equal(NoiseSchedule().alphas_cumprod, diffusers_ddim().alphas_cumprod)
    linear = NoiseSchedule(beta_schedule="linear", beta_start=0.0001, beta_end=0.02)
    reference = DDIMScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="linear")
    np.testing.assert_array_equal(linear.alphas_cumprod, reference.alphas_cumprod)


@pytest.mark.parametrize("steps, strength", [(20, 0.99), (7, 0.6), (4, 1.0), (50, 1.0)])
def test_ddim_trajectory_is_diffusers_bit_for_bit(steps, strength):
    reference = diffusers_ddim()
    reference.set_timesteps(steps)
    first = steps - min(int(steps * strength), steps)
    sampler = DDIMSampler(NoiseSchedule(), steps, strength)
    assert sampler.timesteps == reference.timesteps[first:].tolist()

    generator = torch.Generator().manual_seed(0)
    theirs = torch.randn(2, 4, 8, 8, generator=generator)
    ours, ours_np = theirs.clone(), theirs.numpy().copy()
    for index, t in enumerate(reference.timesteps[first:]):
        eps = torch.randn(2, 4, 8, 8, generator=generator)
        theirs = reference.step(eps, t, theirs).prev_sample
        ours = sampler.step(eps, index, ours)
        ours_np = sampler.step(eps.numpy(), index, ours_np)
    assert torch.equal(ours, theirs)
    # NumPy's square root is the correctly rounded one, PyTorch's float32 power is not
    np.testing.assert_allclose(ours_np, theirs.numpy(), rtol=1e-5, atol=1e-4)
    assert ours_np.dtype == np.float32


def test_add_noise_and_predict_x0():
    reference, schedule = diffusers_ddim(), NoiseSchedule()
    x0, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([0, 500, 999])
    noisy = schedule.add_noise(x0, noise, t)
    assert torch.equal(noisy, reference.add_noise(x0, noise, t))
    assert torch.equal(
        schedule.add_noise(x0, noise, 900), reference.add_noise(x0, noise, torch.tensor([900]))
    )
    torch.testing.assert_close(schedule.predict_x0(noisy, noise, t), x0, rtol=1e-3, atol=1e-3)
    as_numpy = schedule.add_noise(x0.numpy(), noise.numpy(), t.numpy())
    np.testing.assert_allclose(as_numpy, noisy.numpy(), atol=1e-6)


@pytest.mark.parametrize("steps, strength", [(20, 1.0), (10, 0.99), (7, 0.6), (3, 1.0)])
def test_dpm_solver_matches_diffusers(steps, strength):
    reference = DPMSolverMultistepScheduler.from_config(
        diffusers_ddim().config, algorithm_type="dpmsolver++", solver_order=2
    )
    reference.set_timesteps(steps)
    first = steps - min(int(steps * strength), steps)
    reference.set_begin_index(first)
    sampler = DPMSolverSampler(NoiseSchedule(), steps, strength)
    assert sampler.timesteps == reference.timesteps[first:].tolist()
    generator = torch.Generator().manual_seed(0)
    theirs = torch.randn(2, 4, 8, 8, generator=generator) * 10
    ours = theirs.clone()
    for index, t in enumerate(reference.timesteps[first:]):
        eps = torch.randn(2, 4, 8, 8, generator=generator)
        theirs = reference.step(eps, t, theirs).prev_sample
        ours = sampler.step(eps, index, ours)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-3)


def test_v_prediction_samples_as_diffusers_does_and_its_target_implies_the_noise():
    schedule = NoiseSchedule(prediction_type="v_prediction")
    x0, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([0, 500, 999])
    reference = DDIMScheduler.from_config(diffusers_ddim().config, prediction_type="v_prediction")
    target = schedule.target(x0, noise, t)
    torch.testing.assert_close(target, reference.get_velocity(x0, noise, t))
    noisy = schedule.add_noise(x0, noise, t)
    torch.testing.assert_close(schedule.epsilon(noisy, target, t), noise, rtol=1e-4, atol=1e-4)
    assert NoiseSchedule().target(x0, noise, t) is noise

    dpm = DPMSolverMultistepScheduler.from_config(
        reference.config, algorithm_type="dpmsolver++", solver_order=2
    )
    for theirs_scheduler, ours_sampler in (
        (reference, DDIMSampler(schedule, 10)),
        (dpm, DPMSolverSampler(schedule, 10)),
    ):
        theirs_scheduler.set_timesteps(10)
        generator = torch.Generator().manual_seed(0)
        theirs = torch.randn(2, 4, 8, 8, generator=generator)
        ours = theirs.clone()
        for index, step_t in enumerate(theirs_scheduler.timesteps):
            v = torch.randn(2, 4, 8, 8, generator=generator)
            theirs = theirs_scheduler.step(v, step_t, theirs).prev_sample
            ours = ours_sampler.step(v, index, ours)
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_guidance_and_initial_latents():
    eps = torch.stack([torch.zeros(4, 2, 2), torch.ones(4, 2, 2)])  # (uncond; cond)
    assert torch.equal(guided(eps, 2.5), torch.full((1, 4, 2, 2), 2.5))
    schedule = NoiseSchedule()
    sampler = make_sampler("ddim", schedule, 10, 0.5)
    image, noise = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    assert initial_latents(schedule, sampler, image, noise, 1.0) is noise
    assert torch.equal(
        initial_latents(schedule, sampler, image, noise, 0.5),
        schedule.add_noise(image, noise, sampler.timesteps[0]),
    )


def test_the_loop_reports_replaces_and_cancels():
    sampler = make_sampler("ddim", NoiseSchedule(), 5)
    seen = []

    def on_step(step):
        seen.append((step.index, step.count, step.timestep))
        return torch.zeros(1) if step.index == 1 else None

    calls = []

    def predict(latents, t):
        calls.append(latents.clone())
        return torch.zeros_like(latents)

    denoise(predict, sampler, torch.ones(1), on_step=on_step)
    assert seen == [(i, 5, t) for i, t in enumerate(sampler.timesteps)]
    assert torch.equal(calls[2], torch.zeros(1))  # the replacement went on

    asked = []

    def stop_after_two():
        asked.append(True)
        return len(asked) > 2

    with pytest.raises(Cancelled, match="step 3 of 5"):
        denoise(
            predict,
            make_sampler("ddim", NoiseSchedule(), 5),
            torch.ones(1),
            cancelled=stop_after_two,
        )


def test_scheduler_config_round_trip_and_refusals(tmp_path):
    schedule = NoiseSchedule(steps_offset=1, timestep_spacing="trailing")
    schedule.save(tmp_path)
    config = json.loads((tmp_path / "scheduler_config.json").read_text())
    assert config["_class_name"] == "DDIMScheduler"
    assert NoiseSchedule.load(tmp_path) == schedule
    # diffusers reads it as the same DDIM schedule
    reference = DDIMScheduler.from_pretrained(tmp_path)
    reference.set_timesteps(10)
    assert DDIMSampler(schedule, 10).timesteps == reference.timesteps.tolist()
    for bad in (
        {"prediction_type": "sample"},
        {"clip_sample": True},
        {"beta_schedule": "cosine"},
    ):
        with pytest.raises(ConfigError):
            NoiseSchedule.from_config(bad)
