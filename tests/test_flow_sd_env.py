"""DiffusionSDE-FlowSD-v0 end to end, offline (HF_HUB_OFFLINE=1), on tiny random SD3-like and FLUX-like
directories built here: episodes through gym.make, both checkers, the velocity equal to the pipeline's
Euler velocity, the shift equal to the scheduler's, LoRA policies (ratio 1, two identical ranks)."""

from __future__ import annotations

import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import diffusion_gym  # noqa: F401
from agents import AGENTS
from agents.common.trajectories import collect
from diffusion_gym import distributed
from diffusion_gym.tasks.stable_diffusion.env import make_flow_vector_env
from tests.distributed_launch import run_ranks

from .test_agents import assert_ratios_are_one
from .tiny_models import build_tiny_flux, build_tiny_sd3, build_tiny_stable_diffusion

FAMILIES = ("sd3", "flux")
FAMILY = {"sd3": "sd3", "flux": "flux", "schnell": "flux"}
"""Each tiny directory's family: FLUX.1-dev-like ("flux") and FLUX.1-schnell-like ("schnell")."""
SMALL = {"resolution": 16, "max_sequence_length": 8}
"""16x16 images (latents 4x8x8) and 8 T5 tokens: the tiny directories' sizes."""


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_flow")
    return {
        "sd3": build_tiny_sd3(root / "sd3"),
        "flux": build_tiny_flux(root / "flux"),
        "schnell": build_tiny_flux(root / "schnell", schnell=True),
    }


def make(directory: Path, num_envs: int = 2, **kwargs):
    return make_flow_vector_env(num_envs, model_path=str(directory), **(SMALL | kwargs))


@pytest.mark.parametrize("family", FAMILIES)
def test_an_episode_through_gym_make(dirs, family):
    env = gym.make("DiffusionSDE-FlowSD-v0", model_path=str(dirs[family]), prompt="a cat", n_steps=4, **SMALL)
    obs, _ = env.reset(seed=0)
    assert obs["x"].shape == (256,) and obs["cond"] == 0  # the flattened 4x8x8 latent, the one prompt
    for _ in range(4):
        obs, reward, terminated, truncated, info = env.step(np.zeros(256, np.float32))
    assert terminated and not truncated and np.isfinite(reward)
    # the default reward: JPEG compressibility of the decoded 16x16 image, in kB
    assert -2 < info["terminal_reward"] < 0
    batched = env.unwrapped.batched
    assert batched.parametrization == "velocity" and batched.integrator == "flow_sde" and batched.noise_level == 0.7


@pytest.mark.parametrize("family", FAMILIES)
def test_both_checkers_are_silent(dirs, family):
    kwargs = dict(model_path=str(dirs[family]), prompt=["a cat", "a dog"], n_steps=3, **SMALL)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(gym.make("DiffusionSDE-FlowSD-v0", **kwargs).unwrapped)
        sb3_check_env(gym.make("DiffusionSDE-FlowSD-v0", **kwargs))


def pipeline(directory: Path, dtype: torch.dtype = torch.float64):
    from diffusers import DiffusionPipeline

    return DiffusionPipeline.from_pretrained(directory, local_files_only=True, dtype=dtype)


def recorded_steps(pipe, family: str, **call) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(latents, timestep, guided velocity) at each of the pipeline's Euler steps, image-shaped."""
    from diffusion_gym.base_models.diffusers_transformer import unpack_latents

    steps, euler_step = [], pipe.scheduler.step

    def record(model_output, timestep, sample, *args, **kwargs):
        steps.append((sample.clone(), torch.as_tensor(timestep).clone(), model_output.clone()))
        return euler_step(model_output, timestep, sample, *args, **kwargs)

    pipe.scheduler.step = record
    pipe(height=16, width=16, output_type="latent", generator=torch.Generator().manual_seed(0), **call)
    if family == "flux":
        steps = [(unpack_latents(x, 8, 8), t, unpack_latents(v, 8, 8)) for x, t, v in steps]
    return steps


@pytest.mark.parametrize(
    ("name", "guidance"), [("sd3", 1.0), ("sd3", 0.5), ("sd3", 4.5), ("flux", 3.5), ("flux", 2.0), ("schnell", 3.5)]
)
def test_the_env_velocity_is_the_pipelines_euler_velocity(dirs, name, guidance):
    """At every step of the pipeline's sampler, the velocity the env's model gives for the pipeline's
    latents, timestep, prompt and guidance is the one the pipeline steps with, in float64 to 1e-10
    (relative): the same network call, guidance (SD3's classifier-free mix above 1 only, FLUX.1-dev's
    embedding, none on schnell) and, for FLUX, latent packing. The prompt embeddings are the pipeline's."""
    family = FAMILY[name]
    pipe = pipeline(dirs[name])
    if family == "sd3":
        embeds, null, pooled, null_pooled = pipe.encode_prompt("a cat", None, None, max_sequence_length=8)
        given = dict(negative_prompt_embeds=null, negative_pooled_prompt_embeds=null_pooled)  # (1, ...): squeezed
        call = dict(negative_prompt_embeds=null, negative_pooled_prompt_embeds=null_pooled)
    else:
        embeds, pooled, _ = pipe.encode_prompt("a cat", None, max_sequence_length=8)
        given, call = {}, {}
    steps = recorded_steps(
        pipe,
        family,
        prompt_embeds=embeds,
        pooled_prompt_embeds=pooled,
        guidance_scale=guidance,
        num_inference_steps=4,
        **call,
    )
    embedded = dict(prompt_embeds=embeds, pooled_prompt_embeds=pooled, dtype="float64")
    env = make(dirs[name], 1, guidance_scale=guidance, **embedded, **given)
    schedule, cond = env.score_model.schedule, torch.zeros(1, dtype=torch.int64)
    assert len(steps) == 4
    for x, timestep, v_pipe in steps:
        s = schedule.time_at(timestep.double() / 1000)
        torch.testing.assert_close(1000 * schedule.sigma(s), timestep.double(), rtol=1e-12, atol=0)
        torch.testing.assert_close(env.score_model.predict(s, x, cond), v_pipe, rtol=1e-10, atol=1e-12)
    # Against the unguided model: guidance reaches the network where the pipeline applies it, only there.
    plain = make(dirs[name], 1, guidance_scale=1.0, **embedded).score_model
    x, timestep, v_pipe = steps[1]
    v_plain = plain.predict(schedule.time_at(timestep.double() / 1000), x, cond)
    if name == "schnell" or guidance <= 1.0:
        torch.testing.assert_close(v_plain, v_pipe, rtol=1e-10, atol=1e-12)
    else:
        assert (v_plain - v_pipe).abs().max() > 1e-3


@pytest.mark.parametrize("family", FAMILIES)
def test_at_vanishing_noise_the_env_chain_is_the_pipelines_sampler(dirs, family):
    """On the pipeline's own sigmas (``grid=``) and with the flow SDE's noise level at 1e-6, the env
    with zero actions walks the pipeline's Euler ODE from the same initial latents, step for step
    (float64, within 5e-5: the SDE's noise, of order 1e-6 a step there, leaves 3e-6 to 8e-6). All but
    the last step: the pipeline ends at sigma = 0, where the env's grid cannot (diffusion time 0)."""
    from diffusion_gym.base_models.diffusers_transformer import pack_latents, unpack_latents

    pipe, n, batch = pipeline(dirs[family]), 5, 2
    pipe.set_progress_bar_config(disable=True)
    if family == "sd3":
        embeds, null, pooled, null_pooled = pipe.encode_prompt("a cat", None, None, max_sequence_length=8)
        given = dict(guidance_scale=4.5, negative_prompt_embeds=null[0], negative_pooled_prompt_embeds=null_pooled[0])
        call = dict(
            negative_prompt_embeds=null.expand(batch, -1, -1),
            negative_pooled_prompt_embeds=null_pooled.expand(batch, -1),
        )
    else:
        embeds, pooled, _ = pipe.encode_prompt("a cat", None, max_sequence_length=8)
        given, call = dict(guidance_scale=3.5), {}
    given |= dict(prompt_embeds=embeds, pooled_prompt_embeds=pooled, dtype="float64")
    start = make(dirs[family], batch, **given).reset(seed=0)[0]["x"]
    trajectory = []

    def keep(pipe, i, t, tensors):
        trajectory.append(tensors["latents"].clone())
        return tensors

    pipe(
        prompt_embeds=embeds.expand(batch, -1, -1),
        pooled_prompt_embeds=pooled.expand(batch, -1),
        latents=pack_latents(start) if family == "flux" else start,
        guidance_scale=given["guidance_scale"],
        num_inference_steps=n,
        height=16,
        width=16,
        output_type="latent",
        callback_on_step_end=keep,
        **call,
    )
    schedule = make(dirs[family], 1, **given).score_model.schedule
    grid = 1 - schedule.time_at(pipe.scheduler.sigmas.double()[:-1])  # env time t = 1 - s at the pipeline's sigmas
    env = make(dirs[family], batch, grid=grid, noise_level=1e-6, **given)
    x = env.reset(seed=0)[0]["x"]
    assert torch.equal(x, start) and env.n_steps == n - 1 and len(trajectory) == n
    for k in range(n - 1):
        x = env.step(torch.zeros_like(x))[0]["x"]
        expected = unpack_latents(trajectory[k], 8, 8) if family == "flux" else trajectory[k]
        torch.testing.assert_close(x, expected, rtol=0, atol=5e-5, msg=lambda m, k=k: f"step {k}: {m}")
    assert (x - start).abs().max() > 0.1  # it moved


@pytest.mark.parametrize("family", FAMILIES)
def test_text_prompts_are_encoded_as_the_pipeline_encodes_them(dirs, family):
    pipe = pipeline(dirs[family], torch.float32)
    env = make(dirs[family], 1, prompt=["a cat", "a dog"])
    cond = env.score_model.conditioning
    with torch.no_grad():  # as the env encodes (its attention kernels then are the same)
        check_text_encoding(pipe, family, cond)
    assert not torch.equal(cond.prompt_embeds[0], cond.prompt_embeds[1])


def check_text_encoding(pipe, family, cond) -> None:
    if family == "sd3":
        embeds, null, pooled, null_pooled = pipe.encode_prompt(["a cat", "a dog"], None, None, max_sequence_length=8)
        torch.testing.assert_close(cond.null_embeds, null[0], rtol=0, atol=0)
        torch.testing.assert_close(cond.null_pooled, null_pooled[0], rtol=0, atol=0)
    else:
        embeds, pooled, _ = pipe.encode_prompt(["a cat", "a dog"], None, max_sequence_length=8)
        assert cond.null_embeds is None  # FLUX: no classifier-free guidance, no null prompt
    torch.testing.assert_close(cond.prompt_embeds, embeds, rtol=0, atol=0)
    torch.testing.assert_close(cond.pooled_embeds, pooled, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["sd3", "flux", "schnell"])
def test_the_time_shift_is_the_schedulers(dirs, name):
    """SD3's static shift, FLUX.1-dev's resolution-dependent one (``mu`` from the pipeline's own
    ``calculate_shift`` at its token count) and schnell's none: the env's path on the pipelines'
    unit-interval grids gives the scheduler's sigmas (float32's precision: the scheduler's)."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    pipe = pipeline(dirs[name], torch.float32)
    schedule = make(dirs[name], 1, prompt="a").score_model.schedule
    n = 6
    if name == "sd3":
        assert schedule.shift == 3.0
        pipe.scheduler.set_timesteps(n)
        # the scheduler's grid runs from 1 to its own (shifted) smallest training sigma, then shifts again
        smallest = float(schedule.sigma(torch.tensor(1e-3, dtype=torch.float64)))
        grid = torch.linspace(1.0, smallest, n, dtype=torch.float64)
    else:
        config = pipe.scheduler.config
        tokens = pipe.prepare_latents(1, 4, 16, 16, torch.float32, "cpu", torch.Generator().manual_seed(0))[0].shape[1]
        mu = calculate_shift(
            tokens, config.base_image_seq_len, config.max_image_seq_len, config.base_shift, config.max_shift
        )
        assert tokens == 16 and schedule.shift == (pytest.approx(np.exp(mu), rel=1e-12) if name == "flux" else 1.0)
        grid = torch.linspace(1.0, 1.0 / n, n, dtype=torch.float64)
        pipe.scheduler.set_timesteps(sigmas=grid.numpy(), mu=mu)
    torch.testing.assert_close(schedule.sigma(grid).float(), pipe.scheduler.sigmas[:-1], rtol=1e-6, atol=1e-7)
    bigger = make(dirs[name], 1, prompt="a", resolution=64).score_model.schedule
    assert (bigger.shift > schedule.shift) == (name == "flux")  # only FLUX.1-dev shifts more on more tokens


def test_flux_packing_is_the_pipelines():
    """The 2x2-patch tokens FLUX's transformer sees, and back, as FluxPipeline packs and unpacks them
    (a non-square latent: rows and columns cannot be swapped unnoticed)."""
    from diffusers import FluxPipeline

    from diffusion_gym.base_models.diffusers_transformer import pack_latents, unpack_latents

    x = torch.randn(2, 16, 6, 10, generator=torch.Generator().manual_seed(0))
    tokens = FluxPipeline._pack_latents(x, 2, 16, 6, 10)
    assert torch.equal(pack_latents(x), tokens)
    assert torch.equal(unpack_latents(tokens, 6, 10), FluxPipeline._unpack_latents(tokens, 48, 80, 8))


@pytest.mark.parametrize("family", FAMILIES)
def test_the_reward_sees_the_image_the_pipeline_decodes(dirs, family):
    """The VAE decode of the env's rewards (``z / scaling_factor + shift_factor``) gives the pipeline's
    own image of the same latents, to float32 precision."""
    from diffusion_gym.base_models.diffusers_transformer import unpack_latents
    from diffusion_gym.tasks.stable_diffusion.model import LatentDecoder

    pipe = pipeline(dirs[family], torch.float32)
    pipe.set_progress_bar_config(disable=True)
    run = dict(prompt="a cat", height=16, width=16, num_inference_steps=2, max_sequence_length=8)
    latents = pipe(**run, output_type="latent", generator=torch.Generator().manual_seed(0)).images
    images = pipe(**run, output_type="pt", generator=torch.Generator().manual_seed(0)).images  # in [0, 1]
    latents = unpack_latents(latents, 8, 8) if family == "flux" else latents
    assert pipe.vae.config.shift_factor  # the shift is there to be applied
    with torch.no_grad():
        decoded = LatentDecoder(pipe.vae)(latents)
    torch.testing.assert_close((decoded + 1) / 2, images, rtol=1e-5, atol=1e-5)


def test_bf16_autocast_gives_the_float32_velocity_to_bf16_precision(dirs):
    for family in FAMILIES:
        exact = make(dirs[family], 2, prompt="a cat")
        mixed = make(dirs[family], 2, prompt="a cat", autocast="bfloat16")
        x, cond = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.zeros(2, dtype=torch.int64)
        v32, v16 = exact.predict(1, x, cond), mixed.predict(1, x, cond)
        assert v16.dtype == torch.float32 and torch.isfinite(v16).all()
        rel = ((v16 - v32).norm() / v32.norm()).item()
        assert 0 < rel < 0.05, (family, rel)  # bf16 keeps 8 bits of mantissa


@pytest.mark.parametrize("family", FAMILIES)
def test_a_lora_policy_starts_at_the_base_and_its_ratios_are_one(dirs, family):
    env = make(dirs[family], 4, prompt=["a cat", "a dog"], dtype="float64", n_steps=3)
    agent = AGENTS["ct_ppo"][0](env, AGENTS["ct_ppo"][1](progress=False, policy_net="lora", lr=1e-2))
    trainable = [n for n, p in agent.actor.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any("add_q_proj" in n for n in trainable)  # the text stream's projections of the joint attention
    x, cond = torch.randn(4, 4, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 1, 0])
    assert torch.equal(agent.policy(0.4, x, cond), torch.zeros_like(x))  # LoRA's B starts at zero
    env.reset(seed=0)
    agent.update(collect(env, agent.behaviour_action))
    assert agent.policy(0.4, x, cond).abs().max() > 1e-6
    assert_ratios_are_one(agent, collect(env, agent.behaviour_action))


def _two_rank_lora(directory: str) -> None:
    """Each rank: a LoRA CT-PPO agent on each family's tiny directory, two iterations; the ranks'
    adapters gathered after each."""
    rank, out = distributed.rank(), {}
    for family in FAMILIES:
        env = make(Path(directory) / family, 2, prompt=["a cat", "a dog"], n_steps=3)
        agent = AGENTS["ct_ppo"][0](env, AGENTS["ct_ppo"][1](progress=False, policy_net="lora", lr=1e-2, seed=0))
        names = [n for n, p in agent.actor.named_parameters() if p.requires_grad]
        start = torch.cat([p.detach().reshape(-1) for p in agent.trainable_parameters()])
        diffs = []

        def check(agent, stats, diffs=diffs):
            flat = torch.cat([p.detach().reshape(-1) for p in agent.trainable_parameters()])
            both = distributed.gather(flat[None])
            diffs.append((both[0] - both[1]).abs().max().item())

        agent.learn(reward_queries=2 * 2 * 2, callback=check)
        flat = torch.cat([p.detach().reshape(-1) for p in agent.trainable_parameters()])
        base = sum(p.numel() for p in env.score_model.parameters())
        out[family] = {"diffs": diffs, "moved": (flat - start).abs().max().item(), "names": names}
        out[family] |= {"synchronised": flat.numel(), "critic": sum(p.numel() for p in agent.critic.parameters())}
        out[family]["base"] = base
    torch.save(out, Path(directory) / f"lora.rank{rank}.pt")


def test_two_cpu_ranks_end_with_identical_adapters(dirs, tmp_path):
    """Data-parallel LoRA on two gloo ranks: after each update the ranks' adapters (and critic) are
    identical while they moved, and what is synchronised is the adapters, not the frozen transformer."""
    root = dirs["sd3"].parent
    run_ranks(_two_rank_lora, str(root))
    ranks = [torch.load(root / f"lora.rank{r}.pt") for r in (0, 1)]
    for family in FAMILIES:
        run = ranks[0][family]
        assert run["diffs"] == [0.0, 0.0] and run["moved"] > 0, family
        assert all("lora_" in n for n in run["names"])
        assert run["synchronised"] - run["critic"] < run["base"] / 5


def test_bad_directories_and_arguments_are_clear_errors(dirs, tmp_path):
    sd = build_tiny_stable_diffusion(tmp_path / "sd")
    with pytest.raises(ValueError, match="not of the flow family.*DiffusionSDE-SD-v0"):
        make(sd, prompt="a cat")
    with pytest.raises(ValueError, match="StableDiffusion3Pipeline directory .*use DiffusionSDE-FlowSD-v0"):
        gym.make("DiffusionSDE-SD-v0", model_path=str(dirs["sd3"]), prompt="a cat")
    with pytest.raises(ValueError, match="model_path"):
        make_flow_vector_env(1, prompt="a cat")
    with pytest.raises(FileNotFoundError, match="local SD3 or FLUX directory"):
        make(tmp_path / "nowhere", prompt="a cat")
    with pytest.raises(ValueError, match="true classifier-free guidance .* not supported"):
        make(dirs["flux"], prompt="a cat", negative_prompt="a dog")
    with pytest.raises(ValueError, match="pooled_prompt_embeds"):
        make(dirs["sd3"], prompt_embeds=torch.zeros(1, 8, 64))
    with pytest.raises(ValueError, match="prompt_embeds .* and pooled_prompt_embeds .* together"):
        make(dirs["sd3"], prompt="a", pooled_prompt_embeds=torch.zeros(1, 64))
    with pytest.raises(ValueError, match="negative_pooled_prompt_embeds .* together"):
        make(dirs["sd3"], prompt="a", negative_pooled_prompt_embeds=torch.zeros(64))
    with pytest.raises(ValueError, match="negative_prompt .*or negative_prompt_embeds, not both"):
        make(
            dirs["sd3"],
            prompt="a",
            negative_prompt="b",
            negative_prompt_embeds=torch.zeros(8, 64),
            negative_pooled_prompt_embeds=torch.zeros(64),
        )
    with pytest.raises(ValueError, match="max_sequence_length must be <= 512"):
        make(dirs["sd3"], prompt="a", max_sequence_length=600)
    with pytest.raises(ValueError, match=r"must be \(P, L, D\) and \(P, Dp\)"):
        make(dirs["sd3"], prompt_embeds=torch.zeros(2, 1, 8, 64), pooled_prompt_embeds=torch.zeros(2, 64))
    with pytest.raises(ValueError, match="multiple of 4"):
        make(dirs["flux"], prompt="a", resolution=18)
    with pytest.raises(ValueError, match="prompt .*or prompts, not both"):
        make(dirs["sd3"], prompt="a", prompts=["b"])


def test_unsupported_scheduler_options_are_refused(tmp_path):
    import json
    import shutil

    from diffusion_gym.tasks.stable_diffusion.flow_model import scheduler_shift

    with pytest.raises(ValueError, match="use_karras_sigmas"):
        scheduler_shift({"use_karras_sigmas": True}, 16)
    assert scheduler_shift({"shift": 3.0}, 16) == 3.0
    assert scheduler_shift({"use_dynamic_shifting": True, "time_shift_type": "linear"}, 256) == pytest.approx(0.5)
    directory = build_tiny_sd3(tmp_path / "sd3")
    config = directory / "scheduler" / "scheduler_config.json"
    config.write_text(json.dumps(json.loads(config.read_text()) | {"stochastic_sampling": True}))
    with pytest.raises(ValueError, match="stochastic_sampling"):
        make(directory, prompt="a")
    shutil.rmtree(directory)
