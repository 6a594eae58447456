"""The recipe's VAE training loops: the decoder fine-tune leaves the encoder (so the latents)
alone, and an interrupted run resumes to the same weights as an uninterrupted one."""

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from helpers import tiny_vae
from PIL import Image

import moebius.reproduce.vae_training as vae_training
from moebius.reproduce.vae_training import finetune_decoder


def _photos(count: int = 3) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    smooth = [rng.integers(0, 256, (12, 12, 3), dtype=np.uint8) for _ in range(count)]
    return [Image.fromarray(p).resize((96, 80), Image.Resampling.BICUBIC) for p in smooth]


def _finetune(source, out_dir, photos):
    return finetune_decoder(
        source, photos, out_dir, steps=4, size=32, batch=2, short_sides=(40, 64), checkpoint_every=2
    )


def test_decoder_finetune_trains_the_decoder_only(tmp_path):
    tiny_vae().save_pretrained(tmp_path / "source")
    heldout = [np.asarray(_photos(1)[0].crop((0, 0, 64, 64)))]
    result = finetune_decoder(
        tmp_path / "source",
        _photos(),
        tmp_path / "run",
        steps=3,
        size=32,
        batch=2,
        short_sides=(40, 64),
        heldout=heldout,
    )
    assert 0 < result["heldout_psnr_db"] < 100 and result["steps"] == 3
    before = AutoencoderKL.from_pretrained(tmp_path / "source").state_dict()
    after = AutoencoderKL.from_pretrained(tmp_path / "run" / "vae").state_dict()
    assert before.keys() == after.keys()
    for name, weight in before.items():
        frozen = name.startswith(("encoder.", "quant_conv."))
        assert torch.equal(weight, after[name]) == frozen, name
    trained = sum(w.numel() for n, w in after.items() if n.startswith(("decoder.", "post_quant")))
    assert result["trained_parameters"] == trained


def test_an_interrupted_finetune_resumes_to_the_same_weights(tmp_path, monkeypatch):
    tiny_vae().save_pretrained(tmp_path / "source")
    photos = _photos()
    _finetune(tmp_path / "source", tmp_path / "whole", photos)

    crops = vae_training.random_crops
    calls = []

    def crops_then_stop(*args):
        calls.append(1)
        if len(calls) == 3:  # after the checkpoint at step 2
            raise KeyboardInterrupt
        return crops(*args)

    monkeypatch.setattr(vae_training, "random_crops", crops_then_stop)
    with pytest.raises(KeyboardInterrupt):
        _finetune(tmp_path / "source", tmp_path / "resumed", photos)
    monkeypatch.setattr(vae_training, "random_crops", crops)
    _finetune(tmp_path / "source", tmp_path / "resumed", photos)

    whole = AutoencoderKL.from_pretrained(tmp_path / "whole" / "vae").state_dict()
    resumed = AutoencoderKL.from_pretrained(tmp_path / "resumed" / "vae").state_dict()
    assert all(torch.equal(whole[n], resumed[n]) for n in whole)
    logged = (tmp_path / "resumed" / "loss.jsonl").read_text().splitlines()
    assert logged == (tmp_path / "whole" / "loss.jsonl").read_text().splitlines()


def test_the_colour_anchor_holds_each_blocks_colour_in_the_first_three_channels():
    axes = vae_training.COLOUR_AXES
    torch.testing.assert_close(axes @ axes.T, torch.eye(3))
    grey, green = torch.tensor([1.0, 1.0, 1.0]), torch.tensor([-0.5, 1.0, -0.5])
    torch.testing.assert_close(axes @ green, torch.tensor([0, 0, 1.5**0.5]))
    assert torch.allclose((axes @ grey)[1:], torch.zeros(2), atol=1e-6)

    x = torch.rand(2, 3, 32, 32) * 2 - 1
    blocks = torch.einsum("cj,bjhw->bchw", axes, torch.nn.functional.avg_pool2d(x, 8))
    code = torch.cat([blocks, torch.randn(2, 1, 4, 4)], dim=1)  # the 4th channel is free
    assert vae_training.colour_anchor_loss(code, x, 8) < 1e-6
    without_green = code.clone()
    without_green[:, 2] = 0
    expected = blocks[:, 2].abs().mean() / 3
    torch.testing.assert_close(vae_training.colour_anchor_loss(without_green, x, 8), expected)
