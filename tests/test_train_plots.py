"""The run's matplotlib figures: the loss curve (log axis, raw and smoothed lines, non-finite values
left out) and 2-D sample clouds are written as PNGs; the smoothing is a centred average."""
import math

import pytest
import torch
from PIL import Image

from imm_ext.train.plots import loss_curve, scatter, smoothed


def test_smoothing_is_centred_and_keeps_a_straight_line():
    assert smoothed([1.0, 2.0, 3.0, 4.0, 5.0], 1) == [1.5, 2.0, 3.0, 4.0, 4.5]
    assert smoothed([3.0] * 4, 2) == [3.0] * 4


def test_loss_curve_is_a_png_and_skips_values_a_log_axis_cannot_show(tmp_path):
    steps = list(range(10, 1001, 10))
    values = [math.exp(-s / 300) for s in steps]
    values[5], values[6], values[7] = float("nan"), 0.0, -1.0
    path = loss_curve(steps, values, tmp_path / "nested" / "loss.png", title="toy")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (640, 400)
        assert len(set(image.convert("L").getdata())) > 10  # something was drawn, not a blank canvas
    assert loss_curve([], [], tmp_path / "empty.png").is_file()


def test_scatter_draws_samples_over_the_data(tmp_path):
    path = scatter(torch.randn(300, 2), tmp_path / "points.png", reference=torch.randn(1000, 2))
    with Image.open(path) as image:
        assert image.size == (500, 500)
    with pytest.raises(ValueError, match=r"shape \(N, 2\)"):
        scatter(torch.randn(10, 3), tmp_path / "bad.png")
