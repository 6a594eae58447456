import copy
import json

import cv2
import numpy as np
import pytest
import torch
from helpers import tiny_vae
from PIL import Image

from moebius.errors import ConfigError, InputError
from moebius.train.data import (
    InpaintingDataset,
    MaskSampler,
    MaskSource,
    read_records,
    sample_rng,
)
from moebius.train.latent_cache import (
    LatentCache,
    encode_moments,
    latent_mask,
    masked_images,
    sample_latents,
    write_latent_cache,
)


@pytest.fixture
def dataset(tmp_path):
    from skimage import data

    astronaut = data.astronaut()  # 512×512 RGB
    rng = np.random.default_rng(0)
    lines = []
    for i in range(3):
        y, x = rng.integers(0, 400, size=2)
        Image.fromarray(astronaut[y : y + 48 + 8 * i, x : x + 40]).save(tmp_path / f"{i}.png")
        record = {"image": f"{i}.png", "prompt": ["background", "foreground"][i % 2]}
        if i == 2:
            mask = np.zeros((48 + 8 * i, 40), np.uint8)
            mask[10:20, 5:30] = 255
            Image.fromarray(mask).save(tmp_path / "m2.png")
            record["mask"] = "m2.png"
        lines.append(json.dumps(record))
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path / "train.jsonl"


def sampler():
    return MaskSampler([MaskSource("mat", 1.0)], dataset_mask_prob=1.0, dilate=(3, 7))


@pytest.mark.parametrize("fill", ["none", "telea"])
def test_cache_round_trip_matches_direct_encoding(dataset, tmp_path, fill):
    vae = tiny_vae(norm_num_groups=8, sample_size=32, scaling_factor=0.18215)
    # The reference in float64: PyTorch's own float32 GroupNorm is ~1e-3 off on masked images
    # (more on channels-last maps), the cache's adopted VAE ~1e-5.
    exact = copy.deepcopy(vae).double()
    records = read_records(dataset)
    out = tmp_path / "cache"
    write_latent_cache(
        records,
        vae,
        out,
        32,
        sampler(),
        variants=2,
        seed=5,
        shard_size=2,
        progress=False,
        masked_image_fill=fill,
    )
    index = json.loads((out / "index.json").read_text())
    assert [s["count"] for s in index["shards"]] == [2, 1]
    assert index["latent_size"] == [4, 4] and index["variants"] == 2
    assert index["scaling_factor"] == 0.13025 and index["masked_image_fill"] == fill

    cache = LatentCache(out, seed=5)
    assert len(cache) == 3
    pixels = InpaintingDataset(records, 32, sampler(), seed=5)
    for i in range(3):
        for v in range(2):
            # the cache's variant v of record i is the pixel dataset's sample at (epoch i, pos v)
            direct = pixels[(i, i, v)]
            image, mask = direct["image"][None], direct["mask"][None]
            with torch.no_grad():
                moments = encode_moments(exact, image.double()).float()
                masked_image = masked_images(image, mask, fill)
                masked = encode_moments(exact, masked_image.double()).float()
            number, row = cache._locate[i]
            shard = cache._shard(number)
            # float32 rounding (1e-5 here); a wrong image or mask would be far further off
            close = {"atol": 1e-4, "rtol": 1e-4}
            torch.testing.assert_close(shard.get_tensor("moments")[row, v], moments[0], **close)
            torch.testing.assert_close(
                shard.get_tensor("masked_moments")[row, v], masked[0], **close
            )
            expected_mask = latent_mask(mask, (4, 4))[0].to(torch.uint8)
            assert torch.equal(shard.get_tensor("mask")[row, v], expected_mask)
    # the record with its own mask: the cached hole contains that (dilated) rectangle
    item = cache[(2, 0, 0)]
    assert item["moments"].shape == (8, 4, 4) and item["mask"].shape == (1, 4, 4)
    assert item["input_ids"].tolist() == list(range(10))
    assert cache[(1, 0, 0)]["input_ids"].tolist() == list(range(10, 20))
    picked = {int(sample_rng(5, 0, p).integers(2)) for p in range(8)}
    assert picked == {0, 1}  # both variants get used


def test_masked_images_zero_the_hole_or_hold_opencvs_fill_of_it():
    from skimage import data

    pixels = torch.from_numpy(data.astronaut()[200:264, 200:264].copy()).permute(2, 0, 1)
    images = (pixels.float() / 127.5 - 1.0)[None]
    masks = torch.zeros(1, 1, 64, 64)
    masks[..., 20:40, 10:50] = 1
    hole = masks.bool().expand_as(images)
    zeroed = masked_images(images, masks)
    assert torch.equal(zeroed[~hole], images[~hole]) and not zeroed[hole].any()
    for fill, method in (("telea", cv2.INPAINT_TELEA), ("ns", cv2.INPAINT_NS)):
        hole_u8 = masks[0, 0].numpy().astype(np.uint8)
        expected = cv2.inpaint(pixels.permute(1, 2, 0).numpy().copy(), hole_u8, 3, method)
        filled = masked_images(images, masks, fill)
        back = ((filled[0].permute(1, 2, 0) + 1) * 127.5).round().to(torch.uint8).numpy()
        np.testing.assert_array_equal(back, expected)
        torch.testing.assert_close(filled[~hole], images[~hole])  # outside: the photo
        # inside: a continuation of the surroundings, far nearer the photo than a zero hole
        assert (filled - images)[hole].abs().mean() < 0.5 * (zeroed - images)[hole].abs().mean()
    with pytest.raises(
        ConfigError, match="masked_image_fill must be one of none, telea, ns, got 'blur'"
    ):
        masked_images(images, masks, "blur")


def test_sample_latents_is_mean_plus_std_noise():
    moments = torch.cat([torch.full((1, 4, 2, 2), 2.0), torch.full((1, 4, 2, 2), np.log(0.25))], 1)
    noise = torch.ones(1, 4, 2, 2)
    assert torch.allclose(sample_latents(moments, noise, 0.5), torch.full((1, 4, 2, 2), 1.25))


def test_cache_errors_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="cache-latents"):
        LatentCache(tmp_path)
    (tmp_path / "index.json").write_text('{"format": "other"}')
    with pytest.raises(InputError, match="not a moebius-latent-cache"):
        LatentCache(tmp_path)
    (tmp_path / "bad.jsonl").write_text('{"image": "a.png", "prompt": "sky"}\n')
    with pytest.raises(InputError, match="bad.jsonl:1"):
        read_records(tmp_path / "bad.jsonl")


def test_cache_latents_cli(dataset, tmp_path, capsys):
    from moebius.cli import main

    vae_dir = tmp_path / "vae"
    tiny_vae(norm_num_groups=8, sample_size=32, scaling_factor=0.18215).save_pretrained(vae_dir)
    config = tmp_path / "train.yaml"
    config.write_text("seed: 3\ndata:\n  masks: [{kind: lama, config: thin-256}]\n  dilate: null\n")
    out = tmp_path / "cli_cache"
    args = [str(dataset), str(out), "--vae", str(vae_dir), "--config", str(config)]
    code = main(["cache-latents", *args, "--image-size", "32", "--variants", "1", "--quiet"])
    assert code == 0
    assert "cached 3 images" in capsys.readouterr().out
    assert LatentCache(out).index["seed"] == 3
    code = main(["cache-latents", str(tmp_path / "missing"), str(out), "--vae", str(vae_dir)])
    assert code == 2
    assert capsys.readouterr().err.count("\n") == 1  # one line, no traceback
