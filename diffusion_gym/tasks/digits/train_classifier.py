"""Train the shipped digits classifier on the ``"train"`` split; report held-out accuracy.

    python -m diffusion_gym.tasks.digits.train_classifier            # rewrites the shipped weights
    python -m diffusion_gym.tasks.digits.train_classifier --out DIR  # or writes them elsewhere

Random shifts by up to one pixel augment the 1,438 training images; label smoothing keeps the
log-probabilities (used by the prompt-alignment utility) from saturating.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm.auto import tqdm

from diffusion_gym.tasks.digits import WEIGHTS_DIR
from diffusion_gym.tasks.digits.classifier import WEIGHTS_NAME, DigitsClassifier
from diffusion_gym.tasks.digits.data import digits
from diffusion_gym.validation import PositiveInt, Seed, argument


def random_shift(x: torch.Tensor, generator: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Shift each image by up to ``max_shift`` pixels, filling with background (-1)."""
    padded = F.pad(x, [max_shift] * 4, value=-1.0)
    size = x.shape[-1]
    offsets = torch.randint(0, 2 * max_shift + 1, (x.shape[0], 2), generator=generator)
    return torch.stack([padded[i, :, dy : dy + size, dx : dx + size] for i, (dy, dx) in enumerate(offsets.tolist())])


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: the package's weights)")
    parser.add_argument("--steps", type=argument(PositiveInt), default=3000)
    parser.add_argument("--batch-size", type=argument(PositiveInt), default=128)
    parser.add_argument("--seed", type=argument(Seed), default=0)
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--device", default="cpu", help="where the classifier trains (random draws stay on the CPU)")
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    x_train, y_train = digits("train")
    x_held, y_held = digits("heldout")
    architecture = {"width": 32, "feature_dim": 64}
    device = torch.device(args.device)
    model = DigitsClassifier(**architecture).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.steps)
    for _ in tqdm(range(args.steps), desc="classifier", disable=args.quiet):
        idx = torch.randint(len(y_train), (args.batch_size,), generator=gen)
        x, y = random_shift(x_train[idx], gen).to(device), y_train[idx].to(device)
        loss = F.cross_entropy(model(x), y, label_smoothing=0.05)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model = model.cpu().eval()
    with torch.no_grad():
        accuracy = (model(x_held).argmax(1) == y_held).float().mean().item()
        train_accuracy = (model(x_train).argmax(1) == y_train).float().mean().item()
    metrics = {"heldout_accuracy": accuracy, "train_accuracy": train_accuracy}

    out = args.out if args.out is not None else WEIGHTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), out / f"{WEIGHTS_NAME}.safetensors")
    meta = {"architecture": architecture, "steps": args.steps, "seed": args.seed, "metrics": metrics}
    (out / f"{WEIGHTS_NAME}.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"held-out accuracy {accuracy:.4f} (train {train_accuracy:.4f}); saved to {out}")
    return metrics


if __name__ == "__main__":
    main()
