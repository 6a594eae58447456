"""How fast can a freshly initialised student learn the high-noise regime of its task?

Near pure noise the ε target is almost the noisy latent itself, so "output the first four input
channels" is the first thing a student trained from scratch must learn. This trains a small
Moebius student on exactly that for a few hundred AdamW steps from each requested start and
prints the mean squared error along the way and in eval mode at the end (0 is perfect).

    python scripts/identity_probe.py --steps 300 --lr 1e-3 3e-3 --init authors near-identity

The numbers quoted in ``moebius.nn.initialisation.start_near_identity`` and in the recipe's
``student_lr`` come from this script (1 thread, seed 0).
"""

import argparse
import json
import time

import torch

from moebius.models import build_model
from moebius.models.lcg import category_ids
from moebius.nn.initialisation import STUDENT_INITS, start_near_identity

PROBE_STUDENT = {
    "model_type": "moebius",
    "block_out_channels": [16, 64, 128],
    "layers_per_block": 1,
    "cross_attention_dim": 64,
    "encoder_hid_dim": 96,
    "norm_num_groups": 16,
    "local_receptive_field": 3,
    "heads": 4,
    "sample_size": 16,
}


def probe(init: str, lr: float, steps: int, batch: int = 8) -> dict:
    torch.manual_seed(0)
    model = build_model(PROBE_STUDENT)
    if init == "near-identity":
        start_near_identity(model)
    model.train()
    optimiser = torch.optim.AdamW(model.parameters(), lr)
    generator = torch.Generator().manual_seed(1)
    ids = category_ids("background", batch)
    side = PROBE_STUDENT["sample_size"]

    def draw():
        x = torch.randn(batch, 9, side, side, generator=generator)
        t = torch.randint(800, 1000, (batch,), generator=generator)
        return x, t

    losses, started = [], time.perf_counter()
    for _ in range(steps):
        x, t = draw()
        loss = (model(x, t, ids).sample - x[:, :4]).square().mean()
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        x, t = draw()
        final = (model(x, t, ids).sample - x[:, :4]).square().mean().item()
    window = max(1, steps // 20)
    marks = [0, steps // 4, steps // 2, 3 * steps // 4, steps - window]
    return {
        "init": init,
        "lr": lr,
        "steps": steps,
        "train_mse": [round(sum(losses[i : i + window]) / window, 3) for i in marks],
        "eval_mse": round(final, 3),
        "seconds": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="AdamW steps per run")
    parser.add_argument("--lr", type=float, nargs="+", default=[3e-3], help="learning rates")
    parser.add_argument(
        "--init", nargs="+", choices=STUDENT_INITS, default=list(STUDENT_INITS), help="starts"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for init in args.init:
        for lr in args.lr:
            print(json.dumps(probe(init, lr, args.steps)), flush=True)


if __name__ == "__main__":
    main()
