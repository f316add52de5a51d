"""The policy on a diffusers network base: the pretrained network (a UNet, or SD3's or FLUX's
transformer) with LoRA adapters (Hu et al. 2021, "LoRA"), whose score minus the pretrained score is
the correction ``delta(t, x, c)``.

The adapters are injected with peft (the library behind diffusers' ``add_adapter``, which
``UNet2DModel`` lacks) into a copy of the env's :class:`DiffusersModel`, so the env's own base
model is never touched. peft initialises each adapter's B matrix to zero: the adapted network *is*
the base at the start, and ``delta = 0`` exactly. The pretrained score is the same copy with its
adapters switched off (the copy and the env's network are the two sets of weights held).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from diffusion_gym.base_models.diffusers_unet import DiffusersModel

DEFAULT_TARGETS: tuple[str, ...] = (
    *("to_q", "to_k", "to_v", "to_out.0"),
    *("conv1", "conv2", "time_emb_proj"),
    *("add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"),
)
"""Module-name suffixes that get adapters where the network has them: the attention projections,
the resnet convolutions of diffusers' UNets, and the text stream's projections of SD3's and FLUX's
joint attention (Flow-GRPO's targets on SD3)."""


class LoRAScoreField(nn.Module):
    """``f(t, x, c) = (s_{UNet+LoRA}(T - t, x, c) - s_UNet(T - t, x, c)) / action_scale(t)``: the
    pre-tanh action of a policy whose score correction is what the adapters change.

    Args:
        score_model: the env's pretrained :class:`DiffusersModel` (a UNet's score or a flow network's
            velocity; copied, not modified).
        action_scale: the env's ``action_scale_at``, so that ``tanh(f)`` ~ the correction in env units.
        rank: LoRA rank r.
        alpha: LoRA alpha (the update is scaled by alpha / r); defaults to r.
        target_modules: suffixes of the module names that get adapters.
    """

    def __init__(
        self,
        score_model: DiffusersModel,
        action_scale: Callable[[Tensor], Tensor],
        rank: int = 4,
        alpha: float | None = None,
        target_modules: Sequence[str] = DEFAULT_TARGETS,
    ) -> None:
        super().__init__()
        try:
            from peft import LoraConfig, inject_adapter_in_model
        except ImportError as err:  # pragma: no cover - peft is a dependency
            raise ImportError("the LoRA policy needs peft: pip install peft") from err
        if not isinstance(score_model, DiffusersModel):
            kind = type(score_model).__name__
            raise TypeError(f"LoRA policies need a diffusers network base (DiffusersModel), not {kind}")
        self.score = copy.deepcopy(score_model)
        self.score.requires_grad_(False)
        # Adapters only mean something on the weights they were trained on: checkpoints carry this.
        self.register_buffer("base_fingerprint", fingerprint(self.score.unet))
        names = [name for name, _ in self.score.unet.named_modules()]
        targets = [t for t in target_modules if any(n == t or n.endswith("." + t) for n in names)]
        if not targets:
            raise ValueError(f"none of {list(target_modules)} names a module of this network")
        config = LoraConfig(r=rank, lora_alpha=alpha or rank, target_modules=targets, init_lora_weights=True)
        inject_adapter_in_model(config, self.score.unet)
        self.T = float(score_model.schedule.T)
        self._action_scale = action_scale

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        saved = state_dict.get("base_fingerprint")
        if saved is not None and not torch.allclose(saved.to(self.base_fingerprint), self.base_fingerprint):
            raise ValueError("these LoRA adapters were trained on another base network")
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def _adapters(self, enabled: bool) -> None:
        from peft.tuners.tuners_utils import BaseTunerLayer

        for module in self.score.unet.modules():
            if isinstance(module, BaseTunerLayer):
                module.enable_adapters(enabled)

    def forward(self, t: Tensor, x: Tensor, cond: Tensor | None = None) -> Tensor:
        s = (self.T - t).to(x.dtype)
        try:
            self._adapters(False)
            with torch.no_grad():
                base = self.score.score(s, x, cond)
        finally:
            self._adapters(True)
        correction = self.score.score(s, x, cond) - base
        return correction / self._action_scale(t.to(x.dtype)).view(-1, *([1] * (x.ndim - 1)))


@torch.no_grad()
def fingerprint(module: nn.Module) -> Tensor:
    """Sums and absolute sums of every parameter, in float64: differs for (almost) any other weights."""
    sums = [torch.stack([p.double().sum(), p.double().abs().sum()]) for p in module.parameters()]
    return torch.cat(sums).cpu() if sums else torch.zeros(0, dtype=torch.float64)
