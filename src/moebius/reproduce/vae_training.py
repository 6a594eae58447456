"""A small ``AutoencoderKL`` with the SDXL-VAE latent layout (f8, 4 channels), trained from scratch.

The layout is the authors' so the diffusion models and the pipeline are unchanged, and the VAE
loads through diffusers like the official one. The widths are chosen for speed where it
costs most: the decoder's last two levels run at 256² and 512² for a 512-px photo, so they
are kept at 32 and 16 channels, and the 64² mid-block attention (4096 tokens, a third of
the encoder's time) is left out. Widening the two deepest levels to 128 and 256 channels
(10.0 M parameters against 2.6 M, twice the decode time) did not pay in float32: 23.4 dB held
out after the first stage against 23.4 for these widths, and 23.4 dB after the decoder stage
(a whole recipe run), where this VAE had reached 23.8 in a run on an AVX2 EPYC
(scripts/vae_probe.py and ``moebius reproduce small --scale 0.4``, one seed each, AMD EPYC
with AVX-512 BF16; both before the colour anchor below).

What held both back was colour, not width: trained on reconstruction alone, the code kept
brightness and the red–blue axis but next to nothing of green–magenta (a green leaf decoded
brown, purple cups dark blue; output and input green–magenta correlated 0.0–0.4 on most
held-out photos), though that axis is the third most useful number per 8×8 block. A linear
code of 8×8 blocks holding just each block's mean colour (3 numbers) reconstructs the
held-out photos at 23.7 dB and one with 4 principal components at 25.2 dB
(``scripts/vae_probe.py --pca 4``), so the short run had not even found what a linear code
does. Weighting colour in the loss, more steps or hue-rotated crops did not change that; the
colour anchor does (below).

Loss: L1 + ``gradient_weight`` · L1 between the image gradients (finite differences) at
three scales, which keeps edges sharp where plain L1 is content to blur them, + a tiny
β·KL so the posterior stays a near-deterministic, informative code (as in the SD
autoencoders), + ``anchor_weight`` · the colour anchor (:func:`colour_anchor_loss`): the first
three latent channels are held to each 8×8 block's mean colour in an orthonormal
brightness / red–blue / green–magenta basis, so the code carries every block's colour from
the first steps and the decoder learns to paint it. In the recipe's first stage it lifted the
held-out PSNR from 23.4 to 24.0 dB (weight 2; 23.8 at weight 0.5) and the ladybird-on-a-leaf
photo from 18.4 dB to 26.6; what each photo's mean colour error costs fell to 0.2 dB, where
the VAE bundled before lost 0.85 dB to it after both stages (``scripts/vae_probe.py
--variant base={} --decoder-steps 0 --anchor-weight W``, one thread, one seed, AMD EPYC with
AVX-512 BF16). In the published recipe run (two threads) it gave 23.6 dB after the first
stage and 24.6 after the decoder stage. No adversarial or perceptual term: the target is
reconstruction PSNR and both trade PSNR for texture. After training ``scaling_factor`` is set
to 1/std of the latents, as Stable Diffusion did, so the diffusion models see unit-variance
latents.

:func:`finetune_decoder` then trains the decoder alone for squared error (the encoder frozen,
so the latents do not move); its steps are cheaper than the first stage's, as nothing flows
back through the encoder.
"""

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from moebius.files import atomic_write
from moebius.models.registry import vae_scale_factor
from moebius.train.data import random_crop

SMALL_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [16, 32, 64, 128],
    "layers_per_block": 1,
    "latent_channels": 4,
    # Eight groups, though GroupNorm takes each group's image-wide mean and variance away and
    # the decoder's last one leaves a photo's overall colour to two channels a group: one group
    # reconstructs held-out photos better after the VAE stage (23.71 dB against 23.14) but not
    # after the decoder stage (23.84 against 23.80), and the casts that cost most (green leaves
    # decoded brown, golden grass red) stay (scripts/vae_probe.py --variant
    # 'groups-1={"norm_num_groups": 1}', AMD EPYC, one seed): they were the code's, which the
    # colour anchor fixes, not GroupNorm's.
    "norm_num_groups": 8,
    "mid_block_add_attention": False,
}


def random_crops(
    images: Sequence[Image.Image],
    size: int,
    batch: int,
    short_sides: tuple[int, int],
    rng: np.random.Generator,
) -> torch.Tensor:
    """(batch, 3, size, size) in [-1, 1]: random photo, zoom, position and flip."""
    crops = [
        random_crop(images[int(rng.integers(len(images)))], None, size, rng, True, short_sides)[0]
        for _ in range(batch)
    ]
    pixels = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float()
    return pixels / 127.5 - 1


def gradient_loss(reconstruction: torch.Tensor, target: torch.Tensor, scales: int = 3):
    """Mean L1 between horizontal and vertical finite differences over a 2× pyramid."""
    total = reconstruction.new_zeros(())
    for scale in range(scales):
        if scale:
            reconstruction = F.avg_pool2d(reconstruction, 2)
            target = F.avg_pool2d(target, 2)
        d = reconstruction - target
        total = total + (d[..., :, 1:] - d[..., :, :-1]).abs().mean()
        total = total + (d[..., 1:, :] - d[..., :-1, :]).abs().mean()
    return total / scales


# An orthonormal colour basis: brightness (grey), red–blue and green–magenta.
COLOUR_AXES = torch.nn.functional.normalize(
    torch.tensor([[1.0, 1, 1], [1, 0, -1], [-1, 2, -1]]), dim=1
)


def colour_anchor_loss(latent_mean: torch.Tensor, x: torch.Tensor, factor: int) -> torch.Tensor:
    """Mean L1 between the first three latent channels and each ``factor``² block's mean colour
    in :data:`COLOUR_AXES`: the code is made to carry every block's colour from the start."""
    blocks = torch.einsum("cj,bjhw->bchw", COLOUR_AXES.to(x), F.avg_pool2d(x, factor))
    return (latent_mean[:, :3].float() - blocks).abs().mean()


def _initialise_for_a_short_run(vae, log_variance: float = -12.0) -> None:
    """Two changes to diffusers' initialisation that matter when training is minutes long.
    Every residual block starts as the identity (its last conv zeroed), so the network starts
    as a shallow chain of convolutions that learns a patch code quickly, and depth is taken
    up as it helps. The posterior's log-variance starts at ``log_variance``: at ≈ 0 the decoder
    would first learn from latents drowned in unit noise that the tiny KL weight leaves the
    encoder to silence slowly."""
    from diffusers.models.resnet import ResnetBlock2D

    with torch.no_grad():
        for module in vae.modules():
            if isinstance(module, ResnetBlock2D):
                module.conv2.weight.zero_()
                module.conv2.bias.zero_()
        half = vae.quant_conv.out_channels // 2
        vae.quant_conv.weight[half:].zero_()
        vae.quant_conv.bias[half:].fill_(log_variance)


def _lr(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(steps - warmup, 1)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def reconstruct(vae, image: np.ndarray, generator: torch.Generator | None = None) -> torch.Tensor:
    """decode(encode(image)) of a uint8 HxWx3 image as (1, 3, H, W) on the 0–255 scale, rounded
    as a saved image would be. The posterior's mean, or a sample drawn with ``generator``."""
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 127.5 - 1
    posterior = vae.encode(x).latent_dist
    latent = posterior.mode() if generator is None else posterior.sample(generator)
    return ((vae.decode(latent).sample.clamp(-1, 1) + 1) * 127.5).round()


@torch.no_grad()
def reconstruction_psnr(vae, images: Sequence[np.ndarray], sample: bool = False) -> float:
    """Mean PSNR (dB) of :func:`reconstruct` over whole images (uint8 HxWx3), one at a time.
    ``sample``: decode a posterior sample (what the pipeline does) instead of the mean."""
    generator = torch.Generator().manual_seed(0) if sample else None
    values = []
    for image in images:
        target = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float()
        mse = (reconstruct(vae, image, generator) - target).square().mean()
        values.append(float(10 * torch.log10(255.0**2 / mse)))
    return float(np.mean(values))


def train_vae(
    images: Sequence[Image.Image],
    out_dir: Path,
    steps: int,
    size: int = 128,
    batch: int = 8,
    lr: float = 1e-3,
    kl_weight: float = 1e-6,
    gradient_weight: float = 1.0,
    short_sides: tuple[int, int] = (256, 768),
    bf16: bool = False,
    config: dict | None = None,
    seed: int = 0,
    checkpoint_every: int = 250,
    heldout: Sequence[np.ndarray] = (),
    eval_every: int = 0,
    anchor_weight: float = 2.0,
) -> dict:
    """Train and write ``out_dir/vae`` (diffusers format); resumes from ``out_dir/state.pt``.

    ``bf16`` runs forward and backward under bfloat16 autocast (weights and optimiser stay
    float32). It is 1.35× faster on a CPU with AVX-512 BF16, but the short run learns far less
    in it: the recipe's first stage (SMALL_VAE with 16/32/64/128 channels) reconstructed the
    held-out photos at 18.6 / 19.4 / 20.6 dB after 500 / 1000 / 1500 steps in bfloat16 against
    20.7 / 23.0 / 23.4 dB in float32 (``scripts/vae_probe.py --variant base={}
    --decoder-steps 0``, with and without ``--bfloat16``; one thread each, one seed, AMD EPYC
    with AVX-512 BF16), so float32 is the default. Where the CPU lacks native bfloat16 it is
    slower still: one step (8 crops of 128²) took 27 s against 1.2 s on an AVX2-only AMD EPYC.
    ``heldout`` photos are scored every ``eval_every`` steps (logged) and at the end."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(**(config or SMALL_VAE))
    _initialise_for_a_short_run(vae)
    factor = vae_scale_factor(vae)

    def losses(x: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            posterior = vae.encode(x).latent_dist
            reconstruction = vae.decode(posterior.sample()).sample.float()
        l1 = (reconstruction - x).abs().mean()
        edges = gradient_loss(reconstruction, x)
        kl = posterior.kl().float().mean() / x[0].numel()
        anchor = colour_anchor_loss(posterior.mean, x, factor)
        return {
            "loss": l1 + gradient_weight * edges + kl_weight * kl + anchor_weight * anchor,
            "l1": l1,
            "edges": edges,
            "kl": kl,
            "anchor": anchor,
        }

    loop = _TrainingLoop(images, out_dir, size, batch, short_sides, seed, heldout, eval_every)
    loop.run(vae, list(vae.parameters()), losses, steps, lr, "vae", checkpoint_every)
    vae.eval()
    with torch.no_grad():
        probe = random_crops(images, 2 * size, 16, short_sides, np.random.default_rng(seed + 1))
        scaling = float(1.0 / vae.encode(probe).latent_dist.sample().std())
    vae.register_to_config(scaling_factor=scaling)
    vae.save_pretrained(out_dir / "vae")
    result = {
        "steps": steps,
        "scaling_factor": scaling,
        "parameters": sum(p.numel() for p in vae.parameters()),
        "bfloat16": bf16,
    }
    return result | loop.scores(vae)


def finetune_decoder(
    source: Path,
    images: Sequence[Image.Image],
    out_dir: Path,
    steps: int,
    size: int = 128,
    batch: int = 8,
    lr: float = 3e-4,
    short_sides: tuple[int, int] = (256, 768),
    bf16: bool = False,
    seed: int = 0,
    checkpoint_every: int = 250,
    heldout: Sequence[np.ndarray] = (),
    eval_every: int = 0,
) -> dict:
    """Fine-tune the decoder of the VAE in ``source`` for mean squared error and write the VAE
    to ``out_dir/vae``; resumes from ``out_dir/state.pt``.

    The encoder (and ``quant_conv``) stay frozen, so the latent space, the latent cache and
    every diffusion model trained on it stay valid: only what the latents decode to improves.
    The first stage's L1 and gradient terms keep edges from blurring while the code forms;
    here the target is reconstruction PSNR, that is squared error, as for Stable Diffusion's
    MSE-fine-tuned decoder. ``bf16`` as for :func:`train_vae`."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL.from_pretrained(source, low_cpu_mem_usage=False)
    for module in (vae.encoder, vae.quant_conv):
        module.requires_grad_(False)
    trainable = [p for p in vae.parameters() if p.requires_grad]

    def losses(x: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            with torch.no_grad():
                latents = vae.encode(x).latent_dist.sample()
            reconstruction = vae.decode(latents).sample.float()
        mse = (reconstruction - x).square().mean()
        return {"loss": mse, "mse": mse}

    loop = _TrainingLoop(images, out_dir, size, batch, short_sides, seed, heldout, eval_every)
    loop.run(vae, trainable, losses, steps, lr, "decoder", checkpoint_every)
    vae.eval()
    vae.save_pretrained(out_dir / "vae")
    result = {
        "steps": steps,
        "trained_parameters": sum(p.numel() for p in trainable),
        "bfloat16": bf16,
    }
    return result | loop.scores(vae)


class _TrainingLoop:
    """AdamW on random crops with warm-up and cosine decay, a JSON-lines log and exact
    resumption from ``out_dir/state.pt`` (weights, optimiser and both random generators)."""

    def __init__(
        self,
        images: Sequence[Image.Image],
        out_dir: Path,
        size: int,
        batch: int,
        short_sides: tuple[int, int],
        seed: int,
        heldout: Sequence[np.ndarray],
        eval_every: int,
    ):
        self.images, self.out_dir, self.size, self.batch = images, out_dir, size, batch
        self.short_sides, self.heldout, self.eval_every = short_sides, heldout, eval_every
        self.rng = np.random.default_rng(seed)

    def run(self, vae, parameters, losses, steps: int, lr: float, desc: str, checkpoint_every: int):
        optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.0)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        state_path, log_path = self.out_dir / "state.pt", self.out_dir / "loss.jsonl"
        start = 0
        if state_path.exists():
            state = torch.load(state_path, weights_only=False)
            vae.load_state_dict(state["vae"])
            optimizer.load_state_dict(state["optimizer"])
            self.rng.bit_generator.state = state["rng"]
            torch.set_rng_state(state["torch_rng"])
            start = state["step"]
        if log_path.exists():  # drop lines logged after the checkpoint we resume from
            kept = [
                line
                for line in log_path.read_text().splitlines()
                if json.loads(line)["step"] <= start
            ]
            log_path.write_text("".join(line + "\n" for line in kept))

        vae.train()
        warmup = min(200, steps // 10)
        for step in tqdm(range(start, steps), desc=desc, initial=start, total=steps):
            for group in optimizer.param_groups:
                group["lr"] = _lr(step, steps, lr, warmup)
            x = random_crops(self.images, self.size, self.batch, self.short_sides, self.rng)
            terms = losses(x)
            optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
            record = {"step": step + 1} | {
                name: value.item() for name, value in terms.items() if name != "loss"
            }
            if self.eval_every and self.heldout and (step + 1) % self.eval_every == 0:
                vae.eval()
                record["heldout_psnr_db"] = reconstruction_psnr(vae, self.heldout)
                vae.train()
            with log_path.open("a") as log:
                log.write(json.dumps(record) + "\n")
            if (step + 1) % checkpoint_every == 0 or step + 1 == steps:
                state = {
                    "vae": vae.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "rng": self.rng.bit_generator.state,
                    "torch_rng": torch.get_rng_state(),
                    "step": step + 1,
                }
                atomic_write(state_path, lambda tmp, s=state: torch.save(s, tmp))

    def scores(self, vae) -> dict:
        """Held-out reconstruction PSNR of the posterior's mean and of a sample."""
        if not self.heldout:
            return {}
        return {
            "heldout_psnr_db": reconstruction_psnr(vae, self.heldout),
            "heldout_psnr_sampled_db": reconstruction_psnr(vae, self.heldout, sample=True),
        }
