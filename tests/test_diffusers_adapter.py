"""The diffusers adapter agrees with diffusers itself, and the discrete schedule on continuous time."""

import pytest
import torch
from diffusers import DDPMScheduler

from diffusion_gym.base_models.diffusers_unet import ClassLabels, DiffusersScore
from diffusion_gym.envs.vector import DiffusionSDEVectorEnv
from diffusion_gym.sde import DiscreteVPSchedule, LinearVPSchedule, schedule_from_config

from .tiny_models import tiny_unet


class ZeroReward(torch.nn.Module):
    def forward(self, x, cond=None):
        return x.new_zeros(x.shape[0])


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_env_reproduces_ddpm_scheduler_trajectories(prediction_type):
    """Zero action, DDPM integrator on the scheduler's own timesteps, same noise: the env's states equal
    DDPMScheduler.step's at every timestep (the scheduler's last step, to the denoised x0 at abar = 1, is
    deterministic and lies outside the env, whose grid ends at timestep 99)."""
    unet = tiny_unet()
    scheduler = DDPMScheduler(clip_sample=False, prediction_type=prediction_type, timestep_spacing="trailing")
    scheduler.set_timesteps(10)
    timesteps = scheduler.timesteps.tolist()
    assert timesteps[0] == 999 and timesteps[-1] == 99
    model = DiffusersScore(unet, DiscreteVPSchedule(scheduler.alphas_cumprod), prediction_type)
    grid = [1.0 - (t + 1) / 1000 for t in timesteps]
    env = DiffusionSDEVectorEnv(4, model, ZeroReward(), grid=grid, integrator="ddpm")
    obs, _ = env.reset(seed=0)

    gen = torch.Generator().manual_seed(0)
    x = torch.randn((4, 1, 8, 8), generator=gen)
    torch.testing.assert_close(obs["x"], x, rtol=0, atol=0)
    with torch.no_grad():
        for k, t in enumerate(timesteps[:-1]):
            x = scheduler.step(unet(x, t).sample, t, x, generator=gen).prev_sample
            obs, *_ = env.step(torch.zeros(4, 1, 8, 8))
            torch.testing.assert_close(obs["x"], x, rtol=1e-4, atol=1e-4, msg=f"step {k} (timestep {t})")
    assert obs["t"][0].item() == pytest.approx(0.9)


def test_noise_prediction_types_agree():
    """The same network read as epsilon, v or x0 prediction gives consistent scores (x = alpha x0 + sigma eps)."""
    unet = tiny_unet()
    schedule = DiscreteVPSchedule(DDPMScheduler().alphas_cumprod)
    s = torch.tensor(0.37)
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    alpha, sigma = schedule.alpha(s), schedule.sigma(s)
    with torch.no_grad():
        out = unet(x, schedule.timestep(s).expand(3)).sample
        eps = DiffusersScore(unet, schedule, "epsilon").predict_noise(s, x)
        from_v = DiffusersScore(unet, schedule, "v_prediction").predict_noise(s, x)
        from_x0 = DiffusersScore(unet, schedule, "sample").predict_noise(s, x)
    torch.testing.assert_close(eps, out)
    torch.testing.assert_close(from_v, sigma * x + alpha * out)
    torch.testing.assert_close(from_x0, (x - alpha * out) / sigma)
    torch.testing.assert_close(DiffusersScore(unet, schedule).score(s, x), -out / sigma)


def test_classifier_free_guidance_mixes_conditional_and_null_predictions():
    unet = tiny_unet(num_class_embeds=4)
    schedule = DiscreteVPSchedule(DDPMScheduler().alphas_cumprod)
    model = DiffusersScore(unet, schedule, conditioning=ClassLabels(3, null_class=3), guidance_scale=2.5)
    assert model.num_conditions == 3
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    cond = torch.tensor([0, 2])
    s = torch.tensor(0.5)
    t = schedule.timestep(s).expand(2)
    with torch.no_grad():
        eps_c = unet(x, t, class_labels=cond).sample
        eps_u = unet(x, t, class_labels=torch.tensor([3, 3])).sample
        guided = model.predict_noise(s, x, cond)
    torch.testing.assert_close(guided, eps_u + 2.5 * (eps_c - eps_u), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="pass cond"):
        model.predict_noise(s, x)
    with pytest.raises(ValueError, match="guidance needs a conditional model"):
        DiffusersScore(tiny_unet(), schedule, guidance_scale=2.0)


def test_discrete_schedule_on_continuous_time():
    scheduler = DDPMScheduler()
    sched = DiscreteVPSchedule(scheduler.alphas_cumprod)
    knots = (torch.arange(1000, dtype=torch.float64) + 1) / 1000
    torch.testing.assert_close(sched.alpha(knots) ** 2, scheduler.alphas_cumprod.double(), rtol=1e-12, atol=0)
    torch.testing.assert_close(sched.timestep(knots), torch.arange(1000, dtype=torch.float64), rtol=0, atol=1e-9)
    assert sched.alpha(torch.tensor(0.0, dtype=torch.float64)).item() == 1.0
    mid = torch.tensor(0.5005, dtype=torch.float64)  # halfway between timesteps 499 and 500: geometric mean
    expected = (scheduler.alphas_cumprod[499].double() * scheduler.alphas_cumprod[500].double()).sqrt()
    assert sched.alpha(mid).item() ** 2 == pytest.approx(expected.item(), rel=1e-12)
    # the linear DDPM betas discretise the default continuous schedule: beta(s) ~ 0.1 + 19.9 s
    s = torch.linspace(0.01, 1.0, 50, dtype=torch.float64)
    torch.testing.assert_close(sched.beta(s), LinearVPSchedule().beta(s), rtol=0.03, atol=0.05)
    again = schedule_from_config(sched.config())
    torch.testing.assert_close(again.alpha(s), sched.alpha(s), rtol=0, atol=0)
    with pytest.raises(ValueError, match="decreasing"):
        DiscreteVPSchedule([0.9, 0.95])
