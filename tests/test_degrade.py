"""Low-resolution degradation: sizes, exact nearest/area sampling, policies, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fskd.data.degrade import MODES, Degradation, DegradationPlan, degrade_fixed, parse_policy


def _images(batch: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, 112, 112, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("resolution", [14, 28, 56])
def test_nearest_down_up_equals_block_replication(resolution: int) -> None:
    x = _images()
    factor = 112 // resolution
    # cv2/torch nearest: down keeps pixel (factor*i), up repeats each LR pixel factor times.
    expected = x.numpy()[:, :, ::factor, ::factor].repeat(factor, axis=2).repeat(factor, axis=3)
    out = degrade_fixed(x, resolution, "nearest")
    assert out.shape == x.shape
    np.testing.assert_array_equal(out.numpy(), expected)


def test_area_down_is_block_mean() -> None:
    x = _images(2)
    out = degrade_fixed(x, 14, "area", "nearest").numpy()
    blocks = x.numpy().reshape(2, 3, 14, 8, 14, 8).mean(axis=(3, 5))
    expected = blocks.repeat(8, axis=2).repeat(8, axis=3)
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_full_resolution_is_identity() -> None:
    x = _images()
    assert degrade_fixed(x, 112) is x
    degradation = Degradation(112)
    assert degradation.is_identity
    assert degradation(x) is x


def test_degradation_really_removes_detail() -> None:
    x = _images()
    for resolution in (14, 28, 56):
        for mode in MODES:
            out = degrade_fixed(x, resolution, mode)
            assert out.shape == x.shape
            assert not torch.allclose(out, x)
            assert out.min() >= -1.0 - 1e-6 and out.max() <= 1.0 + 1e-6


def test_every_pair_of_modes_stays_in_range_and_bicubic_steps_are_clamped() -> None:
    # Black/white noise is the worst case for bicubic overshoot. Before, only a bicubic *up* step was clamped:
    # bicubic down then nearest/bilinear/area up gave values to about -1.84 / +1.76.
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(0, 2, (4, 3, 112, 112), generator=generator).float() * 2 - 1
    for down in MODES:
        for up in MODES:
            out = degrade_fixed(x, 14, down, up)
            assert out.min() >= -1.0 and out.max() <= 1.0, (down, up)
            low = F.interpolate(x, size=(14, 14), mode=down, **({"align_corners": False} if down in
                                                                 ("bilinear", "bicubic") else {}))
            if down == "bicubic":
                low = low.clamp(-1, 1)
            expected = F.interpolate(low, size=(112, 112), mode=up, **({"align_corners": False} if up in
                                                                       ("bilinear", "bicubic") else {}))
            if up == "bicubic":
                expected = expected.clamp(-1, 1)
            assert torch.equal(out, expected), (down, up)


def test_policy_parsing() -> None:
    assert parse_policy(14) == ([14], [1.0])
    assert parse_policy("multi") == ([14, 28, 56, 112], [0.25] * 4)
    resolutions, probabilities = parse_policy("multi_hr50")
    assert resolutions == [14, 28, 56, 112] and probabilities[-1] == 0.5
    assert abs(sum(probabilities) - 1) < 1e-12
    for bad in ("tiny", 0, 500):
        with pytest.raises(ValueError):
            parse_policy(bad)
    with pytest.raises(ValueError, match="interpolation"):
        Degradation(14, "lanczos")


def test_multi_policy_applies_each_drawn_resolution_per_sample() -> None:
    x = _images(64)
    degradation = Degradation("multi", "random")
    plan = degradation.sample(64, torch.Generator().manual_seed(3))
    assert set(plan.resolution.tolist()) == {14, 28, 56, 112}
    assert len(set(plan.down_mode.tolist())) > 1 and len(set(plan.up_mode.tolist())) > 1
    out = degradation.apply(x, plan)
    for i in range(64):
        expected = degrade_fixed(
            x[i : i + 1], int(plan.resolution[i]), MODES[plan.down_mode[i]], MODES[plan.up_mode[i]]
        )
        torch.testing.assert_close(out[i : i + 1], expected, rtol=0, atol=1e-6)


def test_hr50_policy_frequencies() -> None:
    plan = Degradation("multi_hr50").sample(20000, torch.Generator().manual_seed(0))
    share_hr = (plan.resolution == 112).float().mean().item()
    assert abs(share_hr - 0.5) < 0.02
    for resolution in (14, 28, 56):
        assert abs((plan.resolution == resolution).float().mean().item() - 1 / 6) < 0.02


def test_same_generator_state_gives_same_batch() -> None:
    x = _images(16)
    degradation = Degradation("multi", "random")
    a = degradation(x, torch.Generator().manual_seed(7))
    b = degradation(x, torch.Generator().manual_seed(7))
    c = degradation(x, torch.Generator().manual_seed(8))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)


def test_fixed_plan_is_respected() -> None:
    x = _images(2)
    plan = DegradationPlan(torch.tensor([112, 14]), torch.tensor([0, 0]), torch.tensor([0, 0]))
    out = Degradation("multi").apply(x, plan)
    torch.testing.assert_close(out[0], x[0], rtol=0, atol=0)
    torch.testing.assert_close(out[1:], degrade_fixed(x[1:], 14), rtol=0, atol=0)


@pytest.mark.parametrize("resolution", [14, 28, 56, 20])
def test_nearest_fast_path_equals_torch_interpolate(resolution: int) -> None:
    import torch.nn.functional as F

    x = _images(3)
    expected = F.interpolate(F.interpolate(x, size=(resolution, resolution), mode="nearest"), size=(112, 112),
                             mode="nearest")
    torch.testing.assert_close(degrade_fixed(x, resolution, "nearest"), expected, rtol=0, atol=0)
