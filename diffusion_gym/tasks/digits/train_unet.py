"""Train a digits base model: a class-conditional UNet2DModel on the 8x8 digits (``"train"`` split).

    python -m diffusion_gym.tasks.digits.train_unet                 # the shipped DDPM weights (~15 min, 2 cores)
    python -m diffusion_gym.tasks.digits.train_unet --model flow    # the flow-matching model's
    python -m diffusion_gym.tasks.digits.train_unet --out DIR       # or writes them elsewhere

``--model ddpm``: continuous-time denoising score matching (Song et al. 2021; Ho et al. 2020, eq. 14
with s uniform on [1/1000, 1]): ``x_s = alpha_s x_0 + sigma_s eps``, loss
``||eps_theta(x_s, s, c) - eps||^2``, the UNet seeing the fractional timestep ``1000 s - 1``.
``--model flow``: conditional flow matching on the linear path (Lipman et al. 2023, its OT path
with sigma_min = 0; Liu et al. 2023): ``x_s = (1 - s) x_0 + s eps`` with s uniform on [0, 1], loss
``||v_theta(x_s, s, c) - (eps - x_0)||^2``, the UNet seeing diffusers' flow timestep ``1000 s``
(``FlowMatchEulerDiscreteScheduler``'s ``sigma * 1000``). Same UNet, data, optimiser and steps. The
class is dropped to the null label with probability 0.1 (classifier-free guidance). The weights
shipped are an exponential moving average.
Besides the final model it saves the EMA weights after 10% of the steps (``*_10pct``), the
under-trained model against which the Frechet-distance test is calibrated. A checkpoint is written
atomically every 500 steps (and at ``--stop-after``); rerunning with the same training arguments
resumes from it and ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
import warnings
from pathlib import Path
from typing import Annotated

import torch
import torch.nn.functional as F
from diffusers import UNet2DModel
from safetensors.torch import save_file
from tqdm.auto import tqdm

from diffusion_gym.base_models.diffusers_unet import FLOW_TIMESTEP_SCALE
from diffusion_gym.checkpoints import load_checkpoint
from diffusion_gym.sde import RectifiedFlowSchedule
from diffusion_gym.tasks.digits import WEIGHTS_DIR
from diffusion_gym.tasks.digits.data import digits
from diffusion_gym.tasks.digits.unet import NULL_CLASS, UNET_CONFIG, WEIGHTS_NAMES, digits_schedule
from diffusion_gym.validation import PositiveFloat, PositiveInt, Range, Seed, argument


def save_weights(model: torch.nn.Module, path: Path, meta: dict) -> None:
    """safetensors weights plus a JSON of the same name (config and training facts)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, path)
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")


def _atomic_save(obj: dict, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: the package's weights)")
    parser.add_argument("--model", choices=sorted(WEIGHTS_NAMES), default="ddpm", help="the model family")
    parser.add_argument("--steps", type=argument(PositiveInt), default=10_000)
    parser.add_argument("--batch-size", type=argument(PositiveInt), default=128)
    parser.add_argument("--lr", type=argument(PositiveFloat), default=1e-3)
    parser.add_argument("--ema", type=argument(Annotated[float, Range(ge=0, lt=1)]), default=0.999)
    parser.add_argument("--seed", type=argument(Seed), default=0)
    parser.add_argument("--checkpoint-every", type=argument(PositiveInt), default=500)
    parser.add_argument(
        "--stop-after", type=int, default=None, help="stop after this many steps of this run (resumable)"
    )
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--device", default="cpu", help="where the UNet trains (random draws stay on the CPU)")
    args = parser.parse_args(argv)
    run = {k: v for k, v in vars(args).items() if k in ("steps", "batch_size", "lr", "ema", "seed")}
    flow = args.model == "flow"
    if flow:  # the DDPM run's record keeps its keys, so that its checkpoint and JSON stay as they were
        run["model"] = "flow"
    name = WEIGHTS_NAMES[args.model]

    out = args.out if args.out is not None else WEIGHTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / f"{name}_checkpoint.pt"
    x_train, y_train = digits("train")
    schedule, flow_path = digits_schedule(), RectifiedFlowSchedule()
    s_min = 1.0 / schedule.n_timesteps

    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    unet = UNet2DModel(**UNET_CONFIG).to(device)
    ema = copy.deepcopy(unet).requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / 500) * max(0.05, 1 - i / args.steps))
    gen = torch.Generator().manual_seed(args.seed)
    start, losses = 0, []
    if ckpt_path.exists():
        keys = ("run", "unet", "ema", "opt", "sched", "gen", "torch_rng", "step", "losses")
        state = load_checkpoint(ckpt_path, "digits UNet training checkpoint", keys)
        if state["run"] != run:
            warnings.warn(f"ignoring {ckpt_path}: it was written by a run with {state['run']}, not {run}", stacklevel=2)
        else:
            unet.load_state_dict(state["unet"])
            ema.load_state_dict(state["ema"])
            opt.load_state_dict(state["opt"])
            sched.load_state_dict(state["sched"])
            gen.set_state(state["gen"])
            torch.set_rng_state(state["torch_rng"])
            start, losses = state["step"], state["losses"]

    meta = {
        "unet_config": UNET_CONFIG,
        "schedule": "rectified flow, x = (1 - s) x0 + s eps, timestep 1000 s" if flow else "DDPMScheduler() defaults",
        "args": run,
    }
    if flow:
        meta["prediction"] = "velocity"
    early_step = max(1, args.steps // 10)
    t0 = time.perf_counter()
    end = args.steps if args.stop_after is None else min(args.steps, start + args.stop_after)
    desc = f"digits UNet ({args.model})"
    bar = tqdm(range(start, end), desc=desc, disable=args.quiet, initial=start, total=args.steps)
    for step in bar:
        idx = torch.randint(len(y_train), (args.batch_size,), generator=gen)
        x0, labels = x_train[idx], y_train[idx].clone()
        labels[torch.rand(args.batch_size, generator=gen) < 0.1] = NULL_CLASS
        if flow:
            s = torch.rand(args.batch_size, generator=gen, dtype=torch.float64)
            timestep = FLOW_TIMESTEP_SCALE * flow_path.sigma(s).float()
        else:
            s = s_min + (1 - s_min) * torch.rand(args.batch_size, generator=gen, dtype=torch.float64)
            timestep = schedule.timestep(s).float()
        path = flow_path if flow else schedule
        alpha, sigma = path.alpha(s).float().view(-1, 1, 1, 1), path.sigma(s).float().view(-1, 1, 1, 1)
        noise = torch.randn(x0.shape, generator=gen)
        x_s, timestep = (alpha * x0 + sigma * noise).to(device), timestep.to(device)
        pred = unet(x_s, timestep, class_labels=labels.to(device)).sample
        loss = F.mse_loss(pred, (noise - x0 if flow else noise).to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            decay = min(args.ema, (step + 1) / (step + 10))
            for p_ema, p in zip(ema.parameters(), unet.parameters(), strict=True):
                p_ema.lerp_(p, 1 - decay)
        losses.append(loss.item())
        if (step + 1) % 100 == 0:
            bar.set_postfix(loss=sum(losses[-100:]) / 100)
        if step + 1 == early_step:
            save_weights(ema, out / f"{name}_10pct.safetensors", meta | {"steps_trained": step + 1})
        if ((step + 1) % args.checkpoint_every == 0 or step + 1 == end) and step + 1 < args.steps:
            _atomic_save(
                {
                    "run": run,
                    "unet": unet.state_dict(),
                    "ema": ema.state_dict(),
                    "opt": opt.state_dict(),
                    "sched": sched.state_dict(),
                    "gen": gen.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "step": step + 1,
                    "losses": losses,
                },
                ckpt_path,
            )
    elapsed = time.perf_counter() - t0
    if end < args.steps:
        print(f"stopped at step {end} of {args.steps} after {elapsed:.0f} s; rerun to resume from {ckpt_path}")
        return {"step": float(end), "seconds": elapsed}
    final_loss = sum(losses[-500:]) / max(1, len(losses[-500:]))
    meta |= {"steps_trained": args.steps, "final_loss": final_loss}
    save_weights(ema, out / f"{name}.safetensors", meta)
    ckpt_path.unlink(missing_ok=True)
    print(f"trained {args.steps} steps in {elapsed:.0f} s this run; final loss {final_loss:.4f}; saved to {out}")
    return {"final_loss": final_loss, "seconds": elapsed}


if __name__ == "__main__":
    main()
