import pytest
import torch
import torch.nn.functional as F

import moebius
from moebius.train.losses import (
    FeatureAdapter,
    LossTerms,
    MultiScaleLatentDistance,
    adaptive_weights,
    build_perceptual,
    combine,
    lognorm_timesteps,
    loss_terms,
    uniform_timesteps,
)

OUT = "diff_model.conv_out.conv_pw.weight"
FEAT = "diff_model.down_blocks.2.attentions.1.proj_out.weight"


def test_lognorm_timesteps_is_floor_1000_sigmoid():
    z = torch.tensor([0.0, 1.0, -2.5, 40.0, -40.0])
    expected = [500, int(1000 / (1 + torch.e**-1.0)), int(1000 / (1 + torch.e**2.5)), 999, 0]
    assert lognorm_timesteps(z, 1000).tolist() == expected
    draws = lognorm_timesteps(torch.randn(20000, generator=torch.Generator().manual_seed(0)), 1000)
    assert draws.min() >= 0 and draws.max() <= 999
    assert abs(draws.float().mean().item() - 500) < 10  # symmetric around the middle


def test_uniform_timesteps_cover_the_low_noise_end():
    z = torch.randn(40000, generator=torch.Generator().manual_seed(0))
    uniform, lognorm = uniform_timesteps(z, 1000), lognorm_timesteps(z, 1000)
    assert uniform.min() >= 0 and uniform.max() <= 999
    counts = torch.bincount(uniform // 100, minlength=10).float() / len(z)
    assert torch.allclose(counts, torch.full((10,), 0.1), atol=0.01)
    # the last steps of a sampler, which lognorm_t almost never trains
    assert (uniform < 100).float().mean() > 0.09 and (lognorm < 100).float().mean() < 0.02


def test_loss_terms_are_the_plain_mses():
    g = torch.Generator().manual_seed(0)
    s, n, t = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(3))
    fs, ft = torch.randn(2, 6, 2, 2, generator=g), torch.randn(2, 6, 2, 2, generator=g)
    terms = loss_terms(s, n, t, fs, ft)
    assert terms.task.item() == pytest.approx(((s - n) ** 2).mean().item(), rel=1e-6)
    assert terms.fine.item() == pytest.approx(((s - t) ** 2).mean().item(), rel=1e-6)
    assert terms.coarse.item() == pytest.approx(((fs - ft) ** 2).mean().item(), rel=1e-6)
    assert terms.perceptual is None
    with pytest.raises(ValueError, match="differ in shape"):
        loss_terms(s, n, t, fs, ft[:, :3])


def test_combine_is_the_papers_formula():
    terms = LossTerms(*(torch.tensor(v) for v in (2.0, 3.0, 5.0, 7.0)))
    w = {"w_fine": torch.tensor(11.0), "w_perc": torch.tensor(13.0), "w_coarse": torch.tensor(0.5)}
    expected = 0.01 * 5.0 + 0.5 * (0.5 * 2.0 + 0.01 * 11.0 * 3.0 + 0.5 * 13.0 * 7.0)
    assert combine(terms, w).item() == pytest.approx(expected)
    assert combine(LossTerms(torch.tensor(2.0)), {}).item() == 2.0  # no-KD baseline


def test_adaptive_weights_match_a_hand_computation_on_the_tiny_student(tiny_config_path):
    torch.manual_seed(0)
    student = moebius.build_model(tiny_config_path).train()
    params = dict(student.named_parameters())
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 9, 8, 8, generator=g)
    noise, teacher_eps = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    teacher_feat = torch.randn(2, 64, 2, 2, generator=g)
    t, ids = torch.tensor([10, 700]), moebius.category_ids("background", 2)
    perceptual = MultiScaleLatentDistance()
    x0_true = torch.randn(2, 4, 8, 8, generator=g)

    def losses():
        out = student(x, t, ids)
        feat = out.block_outputs[2]
        return (
            F.mse_loss(out.sample, noise),
            F.mse_loss(out.sample, teacher_eps),
            F.mse_loss(feat, teacher_feat),
            perceptual(out.sample * 0.5, x0_true),
        )

    def grad_norm(index, name):  # a fresh graph and a plain backward per loss
        student.zero_grad()
        losses()[index].backward()
        return params[name].grad.norm().item()

    state = {k: v.clone() for k, v in student.state_dict().items()}
    hand = {}
    task_out, task_feat = grad_norm(0, OUT), grad_norm(0, FEAT)
    hand["w_fine"] = task_out / (grad_norm(1, OUT) + 1e-6)
    hand["w_perc"] = task_out / (grad_norm(3, OUT) + 1e-6)
    hand["w_coarse"] = grad_norm(2, FEAT) / (task_feat + 1e-4)
    student.load_state_dict(state)  # the extra forwards moved the BatchNorm running stats
    student.zero_grad()

    task, fine, coarse, perc = losses()
    terms = LossTerms(task, fine, coarse, perc)
    weights = adaptive_weights(terms, params[OUT], params[FEAT])
    for name, value in hand.items():
        assert weights[name].item() == pytest.approx(value, rel=1e-4), name
        assert not weights[name].requires_grad
    assert all(p.grad is None for p in student.parameters())  # autograd.grad leaves .grad alone
    total = combine(terms, weights)
    expected = 0.01 * coarse + hand["w_coarse"] * (
        0.5 * task + 0.01 * hand["w_fine"] * fine + 0.5 * hand["w_perc"] * perc
    )
    assert total.item() == pytest.approx(expected.item(), rel=1e-4)
    total.backward()  # the graph was retained


def test_adaptive_weights_are_clamped():
    out, feat = torch.ones(3, requires_grad=True), torch.ones(3, requires_grad=True)
    task = (out**2).sum() + 1e-12 * feat.sum()
    terms = LossTerms(task=task, fine=1e-12 * out.sum(), coarse=1e3 * (feat**2).sum())
    weights = adaptive_weights(terms, out, feat)
    assert weights["w_fine"].item() == 1e6  # 3.46 / (1.7e-12 + 1e-6) > 1e6
    assert weights["w_coarse"].item() == 1e4  # 3464 / (1.7e-12 + 1e-4) > 1e4
    assert set(weights) == {"w_fine", "w_coarse"}  # no perceptual term, no w_perc


def test_feature_adapter_and_perceptual_fallback():
    assert isinstance(FeatureAdapter(64, 64).proj, torch.nn.Identity)
    adapter = FeatureAdapter(64, 96)
    assert adapter(torch.randn(2, 64, 3, 3)).shape == (2, 96, 3, 3)
    distance = MultiScaleLatentDistance(scales=2)
    a = torch.zeros(1, 1, 4, 4)
    b = a.clone()
    b[..., 0, 0] = 1.0
    # scale 0: |d| mean 1/16, x-diff 1/12, y-diff 1/12; scale 1: pooled d = 0.25 at one of 4
    expected = ((1 / 16 + 1 / 12 + 1 / 12) + (0.25 / 4 + 0.25 / 2 + 0.25 / 2)) / 2
    assert distance(b, a).item() == pytest.approx(expected)
    assert distance(a, a).item() == 0.0
    assert build_perceptual("none") is None


def test_auto_perceptual_falls_back_without_elatentlpips():
    pytest.importorskip("pytest")
    try:
        import elatentlpips  # noqa: F401

        pytest.skip("elatentlpips is installed")
    except ImportError:
        pass
    with pytest.warns(UserWarning, match="E-LatentLPIPS unavailable"):
        module = build_perceptual("auto")
    assert isinstance(module, MultiScaleLatentDistance)
    with pytest.raises(RuntimeError, match="E-LatentLPIPS is unavailable"):
        build_perceptual("elatentlpips")
