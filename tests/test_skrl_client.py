"""A client test: a real RL library nobody here wrote, skrl, trains its own PPO on the batched env
through its own Gymnasium wrapper, with no workaround, and its policy beats the pretrained model.

What it relies on, and so checks: the vector env's Gymnasium conventions (``call("render")``, which
skrl's trainer calls every step, spaces, ``reset(seed=...)`` with skrl's seed), ``autoreset_mode``
given as a string in the library's expected mode (skrl assumes same-step resets: README, "Using an
outside RL library"), and rewards whose sum is the objective. The exploration noise starts small
(``log_std`` -3, s.d. 0.05 per component: the env charges the exact KL of every action taken, 0.4
nats an episode at that size on this task against a gain on offer near 0.6; benchmarks/RESULTS.md).

Settings, measured over 16 seeds (2026-12-03, CPU, one thread; skrl's seed 0-15, the scoring seed 7
above it): this test's gained +0.15 to +0.23 in J, each more than 18 standard errors, in 3 to 4 s of
training and scoring. Over seeds 0-3, lr 1e-3 gained +0.10 to +0.16; ``log_std`` -4 gained only
+0.03 to +0.06 (too little exploration to learn from in 20,480 episodes); the two together were
unstable, gains from +0.05 to -0.12 (the likelihood-ratio gradient grows as 1/s.d.).
"""

import pytest
import torch
from torch import nn

skrl = pytest.importorskip("skrl", reason="the client-test extra is not installed: pip install -e .[client]")

import gymnasium as gym  # noqa: E402
from skrl.agents.torch.ppo import PPO, PPO_CFG  # noqa: E402
from skrl.envs.wrappers.torch import wrap_env  # noqa: E402
from skrl.memories.torch import RandomMemory  # noqa: E402
from skrl.models.torch import DeterministicMixin, GaussianMixin, Model  # noqa: E402
from skrl.trainers.torch import SequentialTrainer  # noqa: E402
from skrl.utils import set_seed  # noqa: E402
from skrl.utils.spaces.torch import flatten_tensorized_space, tensorize_space  # noqa: E402

import diffusion_gym  # noqa: E402,F401
from diffusion_gym.evaluation import rollout  # noqa: E402

# skrl's wrapper copies the env's reward and flag tensors with torch.tensor, which warns about it.
pytestmark = pytest.mark.filterwarnings("ignore:To copy construct from a tensor:UserWarning")

N_STEPS, NUM_ENVS, UPDATES = 10, 256, 80


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread for this test, restored after. Its tensors are small (mini-batches of 640 rows,
    a 64-unit MLP): a second thread gains nothing, and while another process keeps the cores busy torch's
    OpenMP workers wait on each other at every op: measured 4 s with one thread against 30 to 155 s with
    two on a 2-core machine while another pytest ran (the gains agreed to the 4th decimal)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Policy(GaussianMixin, Model):
    """A Gaussian policy on the flattened observation (t, x): mean from an MLP, a learned log-std."""

    def __init__(self, observation_space, action_space, device):
        Model.__init__(self, observation_space=observation_space, action_space=action_space, device=device)
        GaussianMixin.__init__(self, clip_actions=False)
        self.net = nn.Sequential(nn.Linear(self.num_observations, 64), nn.Tanh(), nn.Linear(64, self.num_actions))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)  # the pretrained model at the start: mean action zero
        self.log_std = nn.Parameter(torch.full((self.num_actions,), -3.0))

    def compute(self, inputs, role=""):
        return self.net(inputs["observations"]), {"log_std": self.log_std}


class Value(DeterministicMixin, Model):
    def __init__(self, observation_space, action_space, device):
        Model.__init__(self, observation_space=observation_space, action_space=action_space, device=device)
        DeterministicMixin.__init__(self)
        self.net = nn.Sequential(nn.Linear(self.num_observations, 64), nn.Tanh(), nn.Linear(64, 1))

    def compute(self, inputs, role=""):
        return self.net(inputs["observations"]), {}


def test_skrl_ppo_trains_on_the_batched_env_and_beats_the_pretrained_model():
    """skrl's PPO, 20,480 episodes of the 2-D task at N = 10; then its mean policy and the pretrained
    model are scored on the same 8,192 episodes (common random numbers): the paired gain in J must
    exceed 3 of its standard errors."""
    set_seed(0)  # torch's, numpy's and skrl's own key (the env's first reset seed)
    raw = gym.make_vec(
        "DiffusionSDE-v0",
        num_envs=NUM_ENVS,
        vectorization_mode="vector_entry_point",
        n_steps=N_STEPS,
        integrator="exponential",
        autoreset_mode="same_step",
    )
    env = wrap_env(raw, wrapper="gymnasium")
    device = env.device
    models = {
        "policy": Policy(env.observation_space, env.action_space, device),
        "value": Value(env.observation_space, env.action_space, device),
    }
    cfg = PPO_CFG(
        rollouts=N_STEPS,  # one whole episode of every env per update
        learning_epochs=4,
        mini_batches=4,
        discount_factor=1.0,  # the objective is undiscounted
        gae_lambda=0.95,
        learning_rate=3e-4,
        grad_norm_clip=1.0,
        ratio_clip=0.2,
        value_loss_scale=1.0,
    )
    cfg.experiment.write_interval = 0
    cfg.experiment.checkpoint_interval = 0
    memory = RandomMemory(memory_size=N_STEPS, num_envs=NUM_ENVS, device=device)
    agent = PPO(
        models=models,
        memory=memory,
        observation_space=env.observation_space,
        action_space=env.action_space,
        device=device,
        cfg=cfg,
    )
    # The env is closed here, not by skrl at interpreter exit (its log line would outlive pytest's capture).
    trainer_cfg = {"timesteps": UPDATES * N_STEPS, "disable_progressbar": True, "close_environment_at_exit": False}
    trainer = SequentialTrainer(env=env, agents=agent, cfg=trainer_cfg)
    trainer.train()
    env.close()

    policy = models["policy"]
    space = raw.single_observation_space

    @torch.no_grad()
    def mean_action(obs):
        return policy.act({"observations": flatten_tensorized_space(tensorize_space(space, obs))})[1]["mean_actions"]

    score = gym.make_vec(
        "DiffusionSDE-v0",
        num_envs=4096,
        vectorization_mode="vector_entry_point",
        n_steps=N_STEPS,
        integrator="exponential",
    )
    trained = rollout(score, mean_action, 8192, seed=7).objective
    pretrained = rollout(score, None, 8192, seed=7).objective
    gain = trained - pretrained
    mean, se = gain.mean().item(), gain.std().item() / gain.numel() ** 0.5
    assert mean > 3 * se, (mean, se)
