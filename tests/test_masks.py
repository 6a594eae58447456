import numpy as np
import pytest

from moebius.errors import ConfigError
from moebius.masks import (
    MASK_PRESETS,
    LamaMaskGenerator,
    box_mask,
    dilate_mask,
    irregular_mask,
    mat_free_form_mask,
)


def _ratios(generator, size, n, seed=0):
    rng = np.random.default_rng(seed)
    return np.array([generator(size, size, rng).mean() for _ in range(n)])


def test_presets_read_the_authors_probabilities_and_area_cap():
    assert set(MASK_PRESETS) == {
        f"{k}-{s}" for k in ("thin", "medium", "thick") for s in (256, 512)
    }
    medium = LamaMaskGenerator.from_config("medium-512")
    assert medium.probabilities == {"irregular": 1.0, "box": 0.3}
    assert medium.kwargs["irregular"] == {
        "min_times": 4, "max_times": 10, "max_width": 100, "max_angle": 4, "max_len": 200
    }  # fmt: skip
    assert medium.kwargs["box"]["bbox_max_size"] == 150
    assert medium.max_tamper_area == 0.5
    thin = LamaMaskGenerator.from_config("thin-256")
    assert thin.probabilities == {"irregular": 1.0}  # box_proba 0 is dropped


def test_from_config_accepts_a_yaml_path_and_rejects_unknown_names(tmp_path):
    path = tmp_path / "boxes.yaml"
    path.write_text(
        "mask_generator_kwargs:\n  irregular_proba: 0\n  box_proba: 1\n"
        "  box_kwargs: {margin: 4, bbox_min_size: 8, bbox_max_size: 16, min_times: 1, max_times: 1}\n"
        "max_tamper_area: 0.5\n"
    )
    generator = LamaMaskGenerator.from_config(path)
    mask = generator(64, 64, np.random.default_rng(0))
    ys, xs = np.nonzero(mask)
    height, width = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    assert mask.sum() == height * width  # exactly one filled rectangle
    assert 8 <= height < 16 and 8 <= width < 16
    assert ys.min() >= 4 and xs.min() >= 4 and ys.max() < 60 and xs.max() < 60  # margin
    with pytest.raises(ConfigError):
        LamaMaskGenerator.from_config("extra-thick-1024")


@pytest.mark.parametrize("name", ["thin-256", "medium-256", "thick-256"])
def test_lama_hole_ratio_statistics(name):
    ratios = _ratios(LamaMaskGenerator.from_config(name), 256, 60)
    assert ratios.max() <= 0.5  # max_tamper_area
    assert ratios.min() > 0.0  # every preset draws at least one stroke or box
    assert 0.1 < ratios.mean() < 0.4
    assert ratios.std() > 0.05  # a spread of sizes, not one fixed mask


def test_lama_masks_are_binary_deterministic_and_rng_driven():
    generator = LamaMaskGenerator.from_config("thick-512")
    a = generator(512, 512, np.random.default_rng(7))
    b = generator(512, 512, np.random.default_rng(7))
    c = generator(512, 512, np.random.default_rng(8))
    assert a.dtype == np.uint8 and a.shape == (512, 512)
    assert set(np.unique(a)) <= {0, 1}
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    rect = generator(96, 160, np.random.default_rng(1))
    assert rect.shape == (96, 160)


def test_irregular_and_box_primitives():
    rng = np.random.default_rng(0)
    assert irregular_mask(32, 32, rng, min_times=0, max_times=0).sum() == 0
    strokes = irregular_mask(128, 128, rng, max_width=1, min_times=1, max_times=1)
    assert 0 < strokes.mean() < 0.25  # one narrow stroke of 1–5 segments
    boxes = box_mask(64, 64, rng, margin=10, bbox_min_size=5, bbox_max_size=20, min_times=3)
    assert boxes[:10].sum() == boxes[-10:].sum() == boxes[:, :10].sum() == boxes[:, -10:].sum() == 0


def test_mat_free_form_respects_hole_range_and_statistics():
    rng = np.random.default_rng(0)
    ratios = np.array([mat_free_form_mask(128, 128, rng).mean() for _ in range(40)])
    assert ((ratios > 0) & (ratios < 1)).all()
    assert 0.3 < ratios.mean() < 0.9  # MAT masks are large: boxes up to full size + brushes
    bounded = [mat_free_form_mask(128, 96, rng, hole_range=(0.2, 0.4)) for _ in range(10)]
    assert all(m.shape == (128, 96) and 0.2 < m.mean() < 0.4 for m in bounded)
    with pytest.raises(ValueError):
        mat_free_form_mask(64, 64, rng, hole_range=(0.5, 0.5))


def test_dilate_mask_grows_a_pixel_into_a_square():
    mask = np.zeros((11, 11), np.uint8)
    mask[5, 5] = 1
    grown = dilate_mask(mask, 5)
    assert grown.sum() == 25 and grown[3:8, 3:8].all()
    assert np.array_equal(dilate_mask(mask, 1), mask)
