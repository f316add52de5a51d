"""What every agent of the zoo shares: the Agent base class and its loop (``agent``), the policy and
value networks by name (``policies``, ``values``), checkpoints and evaluation (``checkpointing``),
trajectory collection and the PPO-clip loop."""
