"""A small ``AutoencoderKL`` with the SDXL-VAE latent layout (f8, 4 channels), trained from scratch.

Loss: L1 reconstruction + β·KL (β small, as in the SD autoencoders, so the latent stays
informative). No GAN or perceptual term: at this scale they cost more than they give.
After training, ``scaling_factor`` is set to 1/std of the latents, as Stable Diffusion did,
so the diffusion models see unit-variance latents.
"""

import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from moebius.files import atomic_write

SMALL_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [32, 64, 128, 128],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 16,
}


def random_crops(
    images: list[np.ndarray], size: int, batch: int, rng: np.random.Generator
) -> torch.Tensor:
    """(batch, 3, size, size) in [-1, 1], random photo, position and horizontal flip."""
    out = np.empty((batch, size, size, 3), np.float32)
    for i in range(batch):
        image = images[int(rng.integers(len(images)))]
        y = int(rng.integers(0, image.shape[0] - size + 1))
        x = int(rng.integers(0, image.shape[1] - size + 1))
        crop = image[y : y + size, x : x + size]
        out[i] = crop[:, ::-1] if rng.random() < 0.5 else crop
    return torch.from_numpy(out / 127.5 - 1).permute(0, 3, 1, 2).contiguous()


def train_vae(
    images: list[np.ndarray],
    out_dir: Path,
    steps: int,
    size: int = 128,
    batch: int = 8,
    lr: float = 5e-4,
    kl_weight: float = 1e-6,
    seed: int = 0,
    checkpoint_every: int = 250,
) -> dict:
    """Train and write ``out_dir/vae`` (diffusers format); resumes from ``out_dir/state.pt``."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(**SMALL_VAE)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    state_path, log_path = out_dir / "state.pt", out_dir / "loss.jsonl"
    start = 0
    if state_path.exists():
        state = torch.load(state_path, weights_only=False)
        vae.load_state_dict(state["vae"])
        optimizer.load_state_dict(state["optimizer"])
        rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        start = state["step"]
    if log_path.exists():  # drop lines logged after the checkpoint we resume from
        kept = [
            line for line in log_path.read_text().splitlines() if json.loads(line)["step"] <= start
        ]
        log_path.write_text("".join(line + "\n" for line in kept))

    vae.train()
    for step in tqdm(range(start, steps), desc="vae", initial=start, total=steps):
        x = random_crops(images, size, batch, rng)
        posterior = vae.encode(x).latent_dist
        reconstruction = vae.decode(posterior.sample()).sample
        l1 = (reconstruction - x).abs().mean()
        kl = posterior.kl().mean() / x[0].numel()
        loss = l1 + kl_weight * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with log_path.open("a") as log:
            log.write(json.dumps({"step": step + 1, "l1": l1.item(), "kl": kl.item()}) + "\n")
        if (step + 1) % checkpoint_every == 0 or step + 1 == steps:
            state = {
                "vae": vae.state_dict(),
                "optimizer": optimizer.state_dict(),
                "rng": rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(),
                "step": step + 1,
            }
            atomic_write(state_path, lambda tmp, s=state: torch.save(s, tmp))

    vae.eval()
    with torch.no_grad():
        probe = random_crops(images, 2 * size, 16, np.random.default_rng(seed + 1))
        latents = vae.encode(probe).latent_dist.sample()
        scaling = float(1.0 / latents.std())
        psnr = float(
            10 * torch.log10(4 / (vae.decode(latents).sample.clamp(-1, 1) - probe).square().mean())
        )
    vae.register_to_config(scaling_factor=scaling)
    vae.save_pretrained(out_dir / "vae")
    return {
        "steps": steps,
        "scaling_factor": scaling,
        "reconstruction_psnr_db": psnr,
        "parameters": sum(p.numel() for p in vae.parameters()),
    }
