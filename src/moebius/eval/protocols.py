"""The paper's six benchmarks (Moebius §4.1, following PixelHacker) as named presets.

A protocol fixes what a number in the paper's tables means: which images, at what size, with which
masks, scored by which metrics. The authors publish CelebA-HQ / FFHQ evaluation masks (white =
keep) but no list or code for the rest, so where the paper only names a setting ("40–50 % holes",
LaMa "large"/"small" masks) the preset draws masks with our generators (``moebius.masks``) from a
fixed seed; every mask actually used is saved next to the results, so runs stay comparable.
"""

from dataclasses import dataclass, field

from moebius.errors import InputError

ALL_METRICS = ("fid", "lpips", "u_ids", "p_ids", "psnr", "ssim", "psnr_hole", "ssim_hole")


@dataclass(frozen=True)
class MaskSource:
    """How to draw a mask when no ``--masks`` folder is given."""

    kind: str  # "lama" (LamaMaskGenerator preset) or "mat" (mat_free_form_mask)
    preset: str | None = None  # LaMa preset name, e.g. "thick-512"
    hole_range: tuple[float, float] = (0.0, 1.0)  # MAT hole-ratio bounds

    def describe(self) -> str:
        if self.kind == "lama":
            return f"LaMa generator '{self.preset}'"
        low, high = self.hole_range
        return f"MAT free-form masks, hole ratio in ({low:g}, {high:g})"


@dataclass(frozen=True)
class Protocol:
    name: str
    dataset: str
    resolution: int
    expected_images: int | None
    masks: MaskSource
    # convention of the published mask files: "keep" = white is kept (LaMa/MAT eval sets)
    published_masks_white: str | None
    paper: dict = field(default_factory=dict)  # Moebius' numbers, paper Table 1
    variant: str = "ft_places2"  # the released fine-tuned weights meant for this benchmark
    metrics: tuple[str, ...] = ALL_METRICS
    notes: str = ""


PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        Protocol(
            name="places2-test",
            dataset="Places2 (Places365-Standard) test set",
            resolution=512,
            expected_images=10_000,
            masks=MaskSource("mat", hole_range=(0.4, 0.5)),
            published_masks_white=None,
            paper={"fid": 9.48, "lpips": 0.207},
            notes="10k test images at 512 with 40–50 % of the pixels masked",
        ),
        Protocol(
            name="places2-large",
            dataset="Places2 (Places365-Challenge) validation set",
            resolution=512,
            expected_images=36_500,
            masks=MaskSource("lama", preset="thick-512"),
            published_masks_white="keep",
            paper={"fid": 2.35, "lpips": 0.173},
            notes="36.5k val images, LaMa-style large masks",
        ),
        Protocol(
            name="places2-small",
            dataset="Places2 (Places365-Challenge) validation set",
            resolution=512,
            expected_images=36_500,
            masks=MaskSource("lama", preset="thin-512"),
            published_masks_white="keep",
            paper={"fid": 0.92, "lpips": 0.091},
            notes="36.5k val images, LaMa-style small masks",
        ),
        Protocol(
            name="places2-256",
            dataset="Places2 validation set at 256",
            resolution=256,
            expected_images=None,
            masks=MaskSource("lama", preset="thick-256"),
            published_masks_white="keep",
            paper={"fid": 14.13, "lpips": 0.470},
            notes="the 256 px Places2 row",
        ),
        Protocol(
            name="celebahq-512",
            dataset="CelebA-HQ test split",
            resolution=512,
            expected_images=2_000,
            masks=MaskSource("mat", hole_range=(0.0, 1.0)),
            published_masks_white="keep",
            paper={"fid": 5.39, "lpips": 0.122},
            variant="ft_celebahq",
            notes="the authors publish the evaluation masks (white = keep); use them with --masks",
        ),
        Protocol(
            name="ffhq-256",
            dataset="FFHQ evaluation split at 256",
            resolution=256,
            expected_images=None,
            masks=MaskSource("mat", hole_range=(0.0, 1.0)),
            published_masks_white="keep",
            paper={"fid": 8.15, "lpips": 0.231},
            variant="ft_ffhq",
            notes="the authors publish the evaluation masks (white = keep); use them with --masks",
        ),
    )
}


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise InputError(f"unknown protocol {name!r}; choose one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]
