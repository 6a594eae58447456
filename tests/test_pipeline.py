"""MoebiusInpaintPipeline against an independent, plainly written copy of the authors' inference
(diffusers' DDIM scheduler, their preprocessing and paste-back), plus real-photo strategies and
loading from every supported layout. The authors' own outputs are checked in
test_authors_pipeline.py."""

import json
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler
from helpers import TINY_YAML, far_from, tiny_model, tiny_vae, torch_threads
from PIL import Image, ImageFilter
from skimage import data

import moebius
from moebius.compositing import crop_box, prepare
from moebius.errors import CheckpointError, InputError
from moebius.pipeline import MoebiusInpaintPipeline
from moebius.sampling import Cancelled
from moebius.settings import InpaintSettings, Prefill

CONFIG_DIR = Path(moebius.__file__).parent / "configs"


@pytest.fixture(scope="module")
def pipe() -> MoebiusInpaintPipeline:
    p = MoebiusInpaintPipeline(tiny_model(), tiny_vae())
    p.set_progress_bar_config(disable=True)
    return p


def photo(width: int, height: int, which=data.astronaut) -> Image.Image:
    return Image.fromarray(which()).resize((width, height), Image.Resampling.BICUBIC)


def box_mask(width: int, height: int, box: tuple[int, int, int, int]) -> Image.Image:
    mask = np.zeros((height, width), np.uint8)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = 255
    return Image.fromarray(mask)


# ---------------------------------------------------------------------------- the reference loop
def reference_inpaint(
    model,
    vae,
    image: Image.Image,
    mask: Image.Image,
    steps: int,
    guidance: float,
    strength: float,
    noise_offset: float,
    dilation: int = 0,
    prefill: str = "none",
    uncond_ids=tuple(range(10, 20)),
    cond_ids=tuple(range(0, 10)),
    size: int = 64,
):
    """The authors' algorithm written out once: binarise, Lanczos-resize, dilate (the dilated
    mask is the hole and the paste-back weight), encode posterior samples, DDIM with CFG,
    decode, resize back, blend with a radius-3 Gaussian of the dilated mask; a ``prefill`` fills
    the hole of the encoded image with OpenCV (radius 3) first. ``vae`` is a plain
    diffusers one (the pipeline puts its own on this package's kernels, which may change a
    tensor's memory layout, and the ``randn_like`` here follows layouts)."""
    torch.manual_seed(0)
    mask = mask.point(lambda v: 0 if v < 128 else 255, "L")
    w, h = image.size
    if w < h:
        wt, ht = size, int(h * size / w)
    else:
        wt, ht = int(w * size / h), size
    wt, ht = wt // 64 * 64, ht // 64 * 64
    small_image = image.resize((wt, ht), Image.Resampling.LANCZOS)
    small_mask = np.asarray(mask.resize((wt, ht), Image.Resampling.LANCZOS))
    if dilation:
        small_mask = cv2.dilate(small_mask, np.ones((dilation, dilation), np.uint8), iterations=1)

    pixels = np.asarray(small_image)
    if prefill != "none":
        flag = {"telea": cv2.INPAINT_TELEA, "ns": cv2.INPAINT_NS}[prefill]
        pixels = cv2.inpaint(pixels, (small_mask >= 128).astype(np.uint8), 3, flag)
    x = torch.tensor(pixels / 255.0 * 2 - 1).permute(2, 0, 1)[None].float()
    m = torch.tensor(small_mask / 255.0)[None, None].float()
    m = torch.where(m >= 0.5, 1, 0)
    masked = x * (1 - m)

    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        clip_sample=False,
    )
    scheduler.set_timesteps(steps)
    first = steps - min(int(steps * strength), steps)
    timesteps = scheduler.timesteps[first:]

    with torch.no_grad():
        latents = vae.encode(x).latent_dist.sample() * 0.13025
        masked_latents = vae.encode(masked).latent_dist.sample() * 0.13025
        small_m = F.interpolate(m.to(torch.uint8), size=(ht // 8, wt // 8)).float()
        noise = torch.randn_like(latents)
        noise += noise_offset * torch.randn((1, 4, 1, 1))
        z = scheduler.add_noise(latents, noise, timesteps[:1]) if strength < 1 else noise

        ids = torch.tensor([uncond_ids, cond_ids])
        history = []
        for t in timesteps:
            inp = torch.cat(
                [torch.cat([z] * 2), torch.cat([small_m] * 2), torch.cat([masked_latents] * 2)], 1
            )
            eps = model(inp, t[None], ids).sample
            eps_uncond, eps_cond = eps.chunk(2)
            eps = eps_uncond + guidance * (eps_cond - eps_uncond)
            z = scheduler.step(eps, t, z).prev_sample
            history.append(z.clone())
        decoded = (vae.decode(z / 0.13025).sample + 1) / 2

    array = (torch.clamp(decoded[0].permute(1, 2, 0), 0, 1) * 255).numpy().astype(np.uint8)
    result = Image.fromarray(array).resize((w, h), Image.Resampling.LANCZOS)
    # back at the photo's size the paste mask is the dilated one, resized, never smaller
    # than the user's own hole
    paste = np.asarray(Image.fromarray(small_mask).resize((w, h), Image.Resampling.LANCZOS))
    paste = Image.fromarray(np.maximum(paste, np.asarray(mask)))
    radius = 3 * w / wt
    blur = np.asarray(paste.convert("RGB").filter(ImageFilter.GaussianBlur(radius))) / 255.0
    ours, theirs = np.asarray(result) / 255.0, np.asarray(image) / 255.0
    final = np.uint8((ours * blur + (1 - blur) * theirs) * 255)
    return history, final


def run_pipeline(pipe, image, mask, **kwargs):
    history = []

    def record(_pipe, _i, _t, tensors):
        history.append(tensors["latents"].clone())

    out = pipe(image, mask, callback_on_step_end=record, strategy="resize", **kwargs)
    return history, np.asarray(out.images[0])


@pytest.mark.parametrize(
    "width, height, latent, steps, strength, guidance, dilation, prefill",
    [
        # native size, the authors' defaults (pure noise start)
        (64, 64, (8, 8), 6, 0.99, 2.5, 0, "none"),
        (64, 140, (16, 8), 5, 0.6, 2.0, 3, "none"),  # portrait, noised start from the image
        (64, 64, (8, 8), 5, 0.4, 1.0, 0, "telea"),  # noised start from a Telea-filled hole
    ],
)
def test_pipeline_matches_reference_loop(
    pipe, width, height, latent, steps, strength, guidance, dilation, prefill
):
    image = photo(width, height)
    mask = box_mask(width, height, (10, 12, 40, 50))
    ref_hist, ref_image = reference_inpaint(
        pipe.model, tiny_vae(), image, mask, steps, guidance, strength, 0.0357, dilation, prefill
    )
    hist, out = run_pipeline(
        pipe,
        image,
        mask,
        num_inference_steps=steps,
        guidance_scale=guidance,
        strength=strength,
        mask_dilation=dilation,
        prefill=prefill,
        generator=0,
    )
    assert len(hist) == len(ref_hist) == min(int(steps * strength), steps)
    for ours, theirs in zip(hist, ref_hist, strict=True):
        assert ours.shape == theirs.shape == (1, 4, *latent)
        assert (ours - theirs).abs().max().item() <= 1e-5
    np.testing.assert_array_equal(out, ref_image)

    # without a generator the settings' seed (0) is used: the authors' reseeding with 0
    _, out_global = run_pipeline(
        pipe,
        image,
        mask,
        num_inference_steps=steps,
        guidance_scale=guidance,
        strength=strength,
        mask_dilation=dilation,
        prefill=prefill,
    )
    np.testing.assert_array_equal(out_global, ref_image)


def test_foreground_category_swaps_guidance_direction(pipe):
    image, mask = photo(64, 64, data.coffee), box_mask(64, 64, (20, 20, 44, 44))
    ref_hist, ref_image = reference_inpaint(
        pipe.model,
        tiny_vae(),
        image,
        mask,
        4,
        3.0,
        0.99,
        0.0357,
        uncond_ids=tuple(range(0, 10)),
        cond_ids=tuple(range(10, 20)),
    )
    hist, out = run_pipeline(
        pipe,
        image,
        mask,
        num_inference_steps=4,
        guidance_scale=3.0,
        category="foreground",
        generator=0,
    )
    assert max((a - b).abs().max().item() for a, b in zip(hist, ref_hist, strict=True)) <= 1e-5
    np.testing.assert_array_equal(out, ref_image)
    _, background = run_pipeline(
        pipe, image, mask, num_inference_steps=4, guidance_scale=3.0, generator=0
    )
    assert not np.array_equal(out, background)


def test_cfg_is_one_2b_batch_per_step(pipe):
    seen = []
    handle = pipe.model.register_forward_hook(
        lambda _m, args, _o: seen.append(tuple(args[0].shape))
    )
    try:
        images = [photo(64, 64), photo(64, 64, data.coffee)]
        masks = [box_mask(64, 64, (5, 5, 30, 30)), box_mask(64, 64, (30, 20, 60, 50))]
        pipe(images, masks, num_inference_steps=5, generator=0)
        assert (
            seen == [(4, 9, 8, 8)] * 4
        )  # 5 steps × 0.99 strength → 4 steps, 2 images × 2 branches
        seen.clear()
        pipe(images[0], masks[0], num_inference_steps=5, guidance_scale=1.0, generator=0)
        assert seen == [(1, 9, 8, 8)] * 4  # no guidance: one branch only
    finally:
        handle.remove()


def test_bfloat16_runs_under_autocast_close_to_float32():
    image, mask = photo(64, 64), box_mask(64, 64, (10, 10, 50, 40))
    reference = MoebiusInpaintPipeline(tiny_model(), tiny_vae())
    low = MoebiusInpaintPipeline(tiny_model(), tiny_vae()).to(dtype=torch.bfloat16)
    for p in (reference, low):
        p.set_progress_bar_config(disable=True)
    autocast_seen = []
    handle = low.model.register_forward_pre_hook(
        lambda *_: autocast_seen.append(torch.is_autocast_enabled("cpu"))
    )
    try:
        out = low(image, mask, num_inference_steps=4, generator=0).images[0]
    finally:
        handle.remove()
    ref = reference(image, mask, num_inference_steps=4, generator=0).images[0]
    assert autocast_seen and all(autocast_seen)
    assert low.dtype == torch.bfloat16
    difference = np.abs(np.asarray(out, np.float32) - np.asarray(ref, np.float32))
    assert 0 < difference.mean() < 2.0  # of 255: bfloat16 rounding, not a different image


def unchanged_outside_blur(
    inp: np.ndarray, out: np.ndarray, mask: Image.Image, scale: float = 1.0
) -> bool:
    far = far_from(mask, scale)
    return bool(far.any()) and np.array_equal(inp[far], out[far])


@pytest.mark.parametrize("strategy", ["resize", "original", "crop"])
def test_strategies_keep_size_and_pixels_outside_the_mask(pipe, strategy):
    image = photo(150, 97, data.coffee)  # odd size, not a multiple of anything
    mask = box_mask(150, 97, (60, 30, 90, 60))
    out = pipe(image, mask, num_inference_steps=3, strategy=strategy, generator=1).images[0]
    assert out.size == image.size and out.mode == "RGB"
    # photo pixels per working pixel (the crop box here is the whole photo)
    scale = 1.0 if strategy == "original" else 150 / 64
    assert unchanged_outside_blur(np.asarray(image), np.asarray(out), mask, scale)
    inside = (np.asarray(mask) > 0)[..., None].repeat(3, axis=2)
    assert not np.array_equal(np.asarray(out)[inside], np.asarray(image)[inside])


def test_crop_only_changes_the_box(pipe):
    image = photo(400, 260)
    mask = box_mask(400, 260, (300, 40, 330, 70))
    box = crop_box(np.asarray(mask) > 0, 64, 16)
    assert box == (283, 23, 347, 87)  # hole 30 px + 2×16 padding < 64 → a 64 px square around it
    out = np.asarray(
        pipe(
            image,
            mask,
            num_inference_steps=3,
            strategy="crop",
            crop_padding=16,
            paste_back=False,
            generator=0,
        ).images[0]
    )
    changed = np.argwhere((out != np.asarray(image)).any(axis=2))
    assert changed.size
    assert changed[:, 1].min() >= box[0] and changed[:, 1].max() < box[2]
    assert changed[:, 0].min() >= box[1] and changed[:, 0].max() < box[3]


def test_auto_strategy_crops_large_photos(pipe):
    image = photo(200, 150)  # short side 150 > 1.5 × 64
    mask = box_mask(200, 150, (20, 20, 40, 40))
    auto = pipe(image, mask, num_inference_steps=2, generator=0).images[0]
    crop = pipe(image, mask, num_inference_steps=2, strategy="crop", generator=0).images[0]
    np.testing.assert_array_equal(np.asarray(auto), np.asarray(crop))


def test_empty_mask_returns_input_with_warning(pipe):
    image = photo(64, 64)
    out = pipe(
        [image, image],
        [box_mask(64, 64, (8, 8, 30, 30)), Image.new("L", (64, 64), 100)],
        num_inference_steps=2,
    )
    assert [(w.index, w.code) for w in out.warnings] == [(1, "empty_mask")]
    assert "mask is empty" in str(out.warnings[0])
    np.testing.assert_array_equal(np.asarray(out.images[1]), np.asarray(image))
    assert not np.array_equal(np.asarray(out.images[0]), np.asarray(image))


def test_mask_size_mismatch(pipe):
    image = photo(64, 64)
    with pytest.raises(InputError, match="differs from image size"):
        pipe(image, box_mask(32, 32, (4, 4, 20, 20)), num_inference_steps=2)
    out = pipe(image, box_mask(32, 32, (4, 4, 20, 20)), num_inference_steps=2, resize_mask=True)
    assert out.images[0].size == (64, 64)


def test_too_few_steps_for_the_strength_is_a_clear_error(pipe):
    with pytest.raises(InputError, match="no denoising step"):
        pipe(
            image=photo(64, 64),
            mask_image=box_mask(64, 64, (8, 8, 40, 40)),
            num_inference_steps=1,
            strength=0.99,
        )


def test_dpm_solver_option(pipe):
    image, mask = photo(64, 64), box_mask(64, 64, (10, 10, 50, 50))
    a = pipe(image, mask, num_inference_steps=4, scheduler="dpm++", output_type="np").images[0]
    b = np.asarray(
        pipe(image, mask, num_inference_steps=4, generator=0, output_type="np").images[0]
    )
    assert a.shape == b.shape == (64, 64, 3) and not np.array_equal(a, b)


def test_save_and_load_round_trip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "pipe")
    assert json.loads((tmp_path / "pipe" / "pipeline.json").read_text())["vae"] == "vae"
    loaded = MoebiusInpaintPipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    image, mask = photo(64, 64), box_mask(64, 64, (10, 10, 50, 50))
    a = pipe(image, mask, num_inference_steps=3, generator=0, output_type="np").images[0]
    b = loaded(image, mask, num_inference_steps=3, generator=0, output_type="np").images[0]
    np.testing.assert_array_equal(a, b)


def test_a_model_directory_carries_its_own_default_settings(tmp_path):
    """pipeline.json's "settings" (only those that differ from the official model's) become
    the loaded pipeline's defaults; a call's keywords still win."""
    own = MoebiusInpaintPipeline(
        tiny_model(), tiny_vae(), default_settings=InpaintSettings(strength=0.5, prefill="telea")
    )
    own.save_pretrained(tmp_path / "pipe")
    manifest = json.loads((tmp_path / "pipe" / "pipeline.json").read_text())
    assert manifest["settings"] == {"strength": 0.5, "prefill": "telea"}
    loaded = MoebiusInpaintPipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    image, mask = photo(64, 64), box_mask(64, 64, (10, 10, 50, 50))
    out = loaded(image, mask, num_inference_steps=4, generator=0, output_type="np")
    assert (out.settings.strength, out.settings.prefill.value) == (0.5, "telea")
    assert out.settings.steps == 4
    official = loaded(
        image, mask, num_inference_steps=4, generator=0, strength=0.99, prefill="none"
    )
    reference = MoebiusInpaintPipeline(tiny_model(), tiny_vae())
    reference.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(
        np.asarray(official.images[0]),
        np.asarray(reference(image, mask, num_inference_steps=4, generator=0).images[0]),
    )
    assert not np.array_equal(out.images[0], np.asarray(official.images[0]))


def test_a_model_trained_on_opencv_filled_masked_images_is_conditioned_on_them(tmp_path):
    """``masked_image_fill`` puts OpenCV's fill, not zero, in the hole of the masked image the
    model sees, whatever the start was prefilled with; it is kept in pipeline.json."""
    model, vae = tiny_model(), tiny_vae()
    telea = MoebiusInpaintPipeline(model, vae, masked_image_fill="telea")
    plain = MoebiusInpaintPipeline(model, vae)
    image, mask = photo(64, 64), box_mask(64, 64, (10, 10, 50, 50))
    region = prepare(image, mask, InpaintSettings(), 64, telea.pixel_multiple)
    pixels, holes = region.model_inputs()
    filled = region.model_inputs(Prefill.TELEA)[0]
    assert filled[:, :, holes[0, 0] > 0].std() > 0.01  # a fill, not a flat hole
    np.testing.assert_array_equal(plain._masked_images([region], pixels, holes, Prefill.NONE),
                                  pixels * (1 - holes))  # fmt: skip
    for start, prefill in ((pixels, Prefill.NONE), (filled, Prefill.TELEA), (pixels, Prefill.NS)):
        conditioned = telea._masked_images([region], start, holes, prefill)
        np.testing.assert_array_equal(conditioned, filled)

    runs = {}
    for name, pipe in (("plain", plain), ("telea", telea)):
        pipe.set_progress_bar_config(disable=True)
        runs[name] = pipe(image, mask, num_inference_steps=2, generator=0, output_type="np")
    assert not np.array_equal(runs["plain"].images[0], runs["telea"].images[0])

    telea.save_pretrained(tmp_path / "pipe")
    manifest = json.loads((tmp_path / "pipe" / "pipeline.json").read_text())
    assert manifest["masked_image_fill"] == "telea" and "settings" not in manifest
    loaded = MoebiusInpaintPipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.masked_image_fill is Prefill.TELEA
    again = loaded(image, mask, num_inference_steps=2, generator=0, output_type="np")
    np.testing.assert_array_equal(again.images[0], runs["telea"].images[0])
    plain.save_pretrained(tmp_path / "official")  # the authors' model: nothing to record
    assert "masked_image_fill" not in json.loads(
        (tmp_path / "official" / "pipeline.json").read_text()
    )

    manifest["masked_image_fill"] = "blur"
    (tmp_path / "pipe" / "pipeline.json").write_text(json.dumps(manifest))
    with pytest.raises(
        CheckpointError, match="masked_image_fill must be one of none, telea, ns, got 'blur'"
    ):
        MoebiusInpaintPipeline.from_pretrained(tmp_path / "pipe")


def test_bad_default_settings_in_a_model_directory_are_one_line_errors(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "pipe")
    manifest_path = tmp_path / "pipe" / "pipeline.json"
    manifest = json.loads(manifest_path.read_text())
    for settings, words in (
        ({"strength": 3}, "strength"),
        ({"speed": 1}, "unknown"),
        (5, "object"),
    ):
        manifest["settings"] = settings
        manifest_path.write_text(json.dumps(manifest))
        with pytest.raises(CheckpointError, match=words) as error:
            MoebiusInpaintPipeline.from_pretrained(tmp_path / "pipe")
        assert "\n" not in str(error.value)


def test_prefill_has_no_effect_from_pure_noise(pipe):
    """At strength 1 the start is pure noise: what the hole held before encoding is unused."""
    image, mask = photo(64, 64), box_mask(64, 64, (10, 10, 50, 50))
    runs = [
        pipe(image, mask, num_inference_steps=3, strength=1.0, prefill=p, output_type="np")
        for p in ("none", "telea")
    ]
    np.testing.assert_array_equal(runs[0].images[0], runs[1].images[0])


def test_residual_decode_cancels_a_colour_cast_of_the_vae():
    """A VAE whose decoder adds a colour cast (here on top of an untrained VAE's own) shifts the
    whole output; decoding only what the denoiser changed and adding it to the (prefilled)
    photo leaves the cast out."""
    vae = tiny_vae()
    with torch.no_grad():
        vae.decoder.conv_out.bias += torch.tensor([0.4, -0.3, 0.0])  # a cast of +51/−38 levels
    cast = MoebiusInpaintPipeline(tiny_model(), vae)
    cast.set_progress_bar_config(disable=True)
    image, mask = photo(64, 64), box_mask(64, 64, (16, 16, 48, 48))
    before = np.asarray(image).astype(float)
    shift = {}
    for residual in (False, True):
        out = cast(
            image,
            mask,
            num_inference_steps=4,
            strength=0.5,
            prefill="telea",
            paste_back="none",
            residual_decode=residual,
            output_type="np",
        ).images[0]
        shift[residual] = (out.astype(float) - before).mean(axis=(0, 1))  # per channel
    assert np.abs(shift[False]).max() > 40  # the cast, and the untrained VAE's own
    assert np.abs(shift[True]).max() < 8, shift  # what is left: the denoiser's change

    # From pure noise there is nothing of the photo to keep: the switch changes nothing.
    runs = [
        cast(image, mask, num_inference_steps=3, strength=1.0, residual_decode=r, output_type="np")
        for r in (False, True)
    ]
    np.testing.assert_array_equal(runs[0].images[0], runs[1].images[0])


class EncodesEveryPhoto(MoebiusInpaintPipeline):
    """The pipeline as it would be if every strength needed the photo's own latent."""

    def _encode_pair(self, pixels, masked, generators, photo_needed=True):
        return super()._encode_pair(pixels, masked, generators, photo_needed=True)


@pytest.mark.parametrize("generator", [[1, 2], None])
def test_from_pure_noise_only_the_masked_photos_are_encoded_and_a_seed_keeps_its_image(
    pipe, generator
):
    images = [photo(64, 64), photo(64, 64, data.coffee)]
    masks = [box_mask(64, 64, (10, 10, 50, 50)), box_mask(64, 64, (5, 20, 40, 60))]
    call = {"num_inference_steps": 3, "generator": generator, "output_type": "np"}
    rows = []
    hook = pipe.vae.encoder.register_forward_hook(lambda _m, args, _o: rows.append(len(args[0])))
    try:
        skipping = pipe(images, masks, strength=1.0, **call).images
        pipe(images, masks, strength=0.99, **call)
    finally:
        hook.remove()
    assert rows == [2, 4]  # from noise the masked photos alone; below strength 1 both

    encoding = EncodesEveryPhoto(pipe.model, pipe.vae, pipe.schedule)
    encoding.set_progress_bar_config(disable=True)
    reference = encoding(images, masks, strength=1.0, **call).images
    for ours, theirs in zip(skipping, reference, strict=True):
        # the same draws; the encoder's batch size may change float rounding only
        assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1


def write_authors_layout(root: Path, model, vae, variant: str = "ft_places2") -> None:
    """``<root>/Moebius/<variant>/diffusion_pytorch_model.bin`` + ``<root>/vae/`` as the authors ship."""
    (root / "Moebius" / variant).mkdir(parents=True)
    torch.save(model.state_dict(), root / "Moebius" / variant / "diffusion_pytorch_model.bin")
    (root / "vae").mkdir()
    (root / "vae" / "config.json").write_text(json.dumps(dict(vae.config)))
    torch.save(vae.state_dict(), root / "vae" / "diffusion_pytorch_model.bin")


def test_authors_layout_with_tiny_model(pipe, tmp_path):
    write_authors_layout(tmp_path, pipe.model, pipe.vae, "ft_ffhq")
    loaded = MoebiusInpaintPipeline.from_pretrained(
        tmp_path, variant="ft_ffhq", model_config=str(TINY_YAML)
    )
    loaded.set_progress_bar_config(disable=True)
    image, mask = photo(64, 64), box_mask(64, 64, (10, 10, 50, 50))
    a = pipe(image, mask, num_inference_steps=2, generator=0, output_type="np").images[0]
    b = loaded(image, mask, num_inference_steps=2, generator=0, output_type="np").images[0]
    np.testing.assert_array_equal(a, b)
    with pytest.raises(CheckpointError, match="Moebius/ft_places2/diffusion_pytorch_model.bin"):
        MoebiusInpaintPipeline.from_pretrained(tmp_path, variant="ft_places2")


def test_hub_offline_gives_download_instructions(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError) as info:
        MoebiusInpaintPipeline.from_pretrained("hustvl/Moebius", cache_dir=tmp_path)
    message = str(info.value)
    assert "hustvl/Moebius/ft_places2/diffusion_pytorch_model.bin" in message
    assert "hf download hustvl/PixelHacker vae/config.json" in message


def test_full_size_student_from_authors_layout(tmp_path):
    """moebius-0.2b (random weights) + a random VAE of the real SDXL config, saved in the
    authors' layout, one CFG step at 512×512."""
    torch.manual_seed(0)
    model = moebius.build_model("moebius-0.2b")
    vae = AutoencoderKL.from_config(json.loads((CONFIG_DIR / "sdxl_vae_config.json").read_text()))
    write_authors_layout(tmp_path, model, vae)
    del model, vae
    pipe = MoebiusInpaintPipeline.from_pretrained(tmp_path)
    pipe.set_progress_bar_config(disable=True)
    assert sum(p.numel() for p in pipe.model.parameters()) == 226_041_531
    assert pipe.image_size == 512

    image = Image.fromarray(data.astronaut())
    mask = box_mask(512, 512, (200, 150, 330, 300))
    latents = []
    with torch_threads(2):
        out = pipe(
            image,
            mask,
            num_inference_steps=1,
            strength=1.0,
            generator=0,
            callback_on_step_end=lambda _p, _i, _t, d: latents.append(d["latents"]),
        ).images[0]
    assert [tuple(x.shape) for x in latents] == [(1, 4, 64, 64)]
    assert out.size == (512, 512)
    assert unchanged_outside_blur(np.asarray(image), np.asarray(out), mask)


def test_teacher_architecture_runs_through_the_same_pipeline():
    """Nothing in the pipeline is student-specific: a tiny PixelHacker (4 levels → 64 px multiple)."""
    teacher = moebius.build_model(
        {
            "model_type": "pixelhacker",
            "block_out_channels": [32, 32, 64, 64],
            "cross_attention_dim": 32,
            "encoder_hid_dim": 48,
            "sample_size": 8,
            "norm_num_groups": 8,
            "heads": 2,
        }
    )
    pipe = MoebiusInpaintPipeline(teacher, tiny_vae())
    pipe.set_progress_bar_config(disable=True)
    assert (pipe.image_size, pipe.pixel_multiple) == (64, 64)
    image, mask = photo(150, 97), box_mask(150, 97, (60, 30, 90, 60))
    for strategy, scale in (("resize", 150 / 64), ("original", 1.0)):
        out = pipe(image, mask, num_inference_steps=2, strategy=strategy, generator=0).images[0]
        assert out.size == image.size
        assert unchanged_outside_blur(np.asarray(image), np.asarray(out), mask, scale)


def test_vae_tiling_for_large_inputs():
    pipe = MoebiusInpaintPipeline(tiny_model(), tiny_vae())
    pipe.set_progress_bar_config(disable=True)
    image, mask = photo(200, 136, data.coffee), box_mask(200, 136, (80, 40, 140, 100))
    plain = pipe(image, mask, num_inference_steps=2, strategy="original", generator=0).images[0]
    pipe.enable_vae_tiling(tile_size=64)  # tiles of 64 px: this input is cut into several
    tiled = pipe(image, mask, num_inference_steps=2, strategy="original", generator=0).images[0]
    assert tiled.size == image.size
    assert unchanged_outside_blur(np.asarray(image), np.asarray(tiled), mask)
    assert not np.array_equal(np.asarray(plain), np.asarray(tiled))
    small = photo(64, 64), box_mask(64, 64, (10, 10, 50, 50))
    a = pipe(*small, num_inference_steps=2, generator=0).images[0]  # at the tile size: untiled
    b = MoebiusInpaintPipeline(pipe.model, tiny_vae())
    b.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(
        np.asarray(a), np.asarray(b(*small, num_inference_steps=2, generator=0).images[0])
    )


def test_progress_cancel_and_timings(pipe):
    images = [photo(64, 64), photo(128, 64, data.coffee)]  # two working sizes: two batches
    masks = [box_mask(64, 64, (8, 8, 40, 40)), box_mask(128, 64, (8, 8, 40, 40))]
    events = []
    out = pipe(images, masks, num_inference_steps=4, on_step=events.append)
    assert [(e.done, e.total) for e in events] == [(i, 6) for i in range(1, 7)]
    assert [e.images for e in events] == [(0,)] * 3 + [(1,)] * 3
    assert set(out.timings) == {"prepare", "encode", "denoise", "decode", "paste", "total"}
    assert out.timings["total"] >= out.timings["denoise"] > 0
    assert out.settings.steps == 4 and out.settings.seed == 0

    cancel = threading.Event()
    with pytest.raises(Cancelled):
        pipe(images, masks, num_inference_steps=4, on_step=lambda _: cancel.set(), cancel=cancel)
    assert cancel.is_set()


def test_each_image_draws_its_own_noise(pipe):
    a, b = photo(64, 64), photo(64, 64, data.coffee)
    mask = box_mask(64, 64, (10, 10, 50, 50))
    together = pipe([a, b], [mask, mask], num_inference_steps=3, generator=[5, 6], output_type="np")
    alone = pipe(b, mask, num_inference_steps=3, generator=6, output_type="np").images[0]
    difference = np.abs(together.images[1].astype(int) - alone.astype(int))
    assert difference.max() <= 1  # the same draws; only batch-size float rounding may differ
    same_seed = pipe([a, b], [mask, mask], num_inference_steps=3, output_type="np").images
    first = pipe(a, mask, num_inference_steps=3, output_type="np").images[0]
    assert np.abs(same_seed[0].astype(int) - first.astype(int)).max() <= 1
