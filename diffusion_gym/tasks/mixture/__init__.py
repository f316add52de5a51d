"""``DiffusionSDE-Mixture-v0``: an 8-component Gaussian mixture in D dimensions (``dim=``, default 8; exact
score), a Bradley-Terry proxy learned from noisy comparisons as the terminal reward, the closed-form
gold utility in ``info``.

The D-dimensional family of ``DiffusionSDE-v0`` (docs/design.md, section 3): unequal weights down to a
rare mode (0.04), well separated anisotropic components (:mod:`.model`), and a gold of three Gaussian
bumps, in a gap between two modes, on the rare mode and (low) on the heaviest mode, whose widths follow
the components' spread (:mod:`.rewards`). The proxy ships for D = 2, 8 and 32; ``reward="gold"``
trains on the gold in any dimension >= 2. The optimal control (J_oracle) is closed form, as for every
Gaussian-mixture task; J_best's dynamic programme is for 2-D only.

``DiffusionSDE-FlowMixture-v0`` is the same task with a flow-matching base model (docs/design.md,
section 3): the exact velocity of the same mixture on the rectified-flow path (``shift=`` as
diffusers' static shift, default 1), sampled by the marginal-preserving flow SDE
(``integrator="flow_sde"``, its noise level ``noise_level=``, default 0.7), with the same data, gold
and proxies (functions of the data alone). Its own env id, not a ``model=`` keyword, because its
integrator, its default and its references differ. Its optimal control is exact at
``noise_level = sqrt(2)`` only (the time reversal); J*_0 is its yardstick elsewhere.
"""

from pathlib import Path

from diffusion_gym.tasks.spec import TaskSpec, register_task

WEIGHTS_DIR = Path(__file__).parent / "weights"

# J*, J(pre) and J_oracle ship per configuration of the suites (references.json: python -m
# diffusion_gym.tasks.references): the optimal control's objective is heavy-tailed, and a few thousand
# episodes of it per run make a noisy yardstick.
TASK = register_task(
    TaskSpec(
        name="mixture",
        env_id="DiffusionSDE-Mixture-v0",
        models="diffusion_gym.tasks.mixture.env:task_models",
        defaults={"integrator": "exponential"},
        throughput=((4096, 100), (65_536, 20)),
        references="diffusion_gym.tasks.mixture:references.json",
    )
)

FLOW_TASK = register_task(
    TaskSpec(
        name="flow_mixture",
        env_id="DiffusionSDE-FlowMixture-v0",
        models="diffusion_gym.tasks.mixture.env:flow_task_models",
        defaults={"integrator": "flow_sde", "noise_level": 0.7},
        throughput=((4096, 100), (65_536, 20)),
        references="diffusion_gym.tasks.mixture:flow_references.json",
    )
)
"""``DiffusionSDE-FlowMixture-v0``: the same mixture, data, proxy and gold with a flow-matching base model
(exact velocity on the rectified-flow path) sampled by the flow SDE."""
