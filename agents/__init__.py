"""The agent zoo (continuous-time PPO and q-learning, DDPO, DPOK, SB3 adapters): see DESIGN section 4.

Agents read the env's transition coefficients (``DiffusionSDEVectorEnv.step_coefficients``,
``pretrained_mean``, ``step_kl``) instead of re-implementing the SDE. The algorithms land with
their own issue; the package exists now so that ``import agents`` works for plug-in code.
"""
