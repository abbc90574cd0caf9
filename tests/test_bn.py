"""BatchNorm recalibration of a compact model before its final evaluation."""

import torch
from torch import nn

from lrtrain.train.bn import recalibrate_bn
from test_trainer import make_cfg, fit


def test_running_statistics_become_the_mean_over_the_batches():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=0.1)).eval()
    batches = [(torch.randn(8, 3, 6, 6) + i, None) for i in range(3)]
    assert recalibrate_bn(model, iter(batches), steps=2) == 2
    with torch.no_grad():
        outs = [model[0](x) for x, _ in batches[:2]]
    mean = torch.stack([o.mean((0, 2, 3)) for o in outs]).mean(0)
    var = torch.stack([o.var((0, 2, 3), unbiased=True) for o in outs]).mean(0)
    torch.testing.assert_close(model[1].running_mean, mean)
    torch.testing.assert_close(model[1].running_var, var)
    # mode and momentum are restored, weights untouched
    assert not model.training and model[1].momentum == 0.1
    assert recalibrate_bn(nn.Sequential(nn.Conv2d(3, 4, 3)), iter(batches), steps=2) == 0


def test_the_trainer_recalibrates_the_compact_model_when_asked(tmp_path):
    cfg = make_cfg(tmp_path, train={"bn_recalibrate": 3})
    _, summary = fit(cfg)
    assert summary["bn_recalibrated_batches"] == 3
    _, plain = fit(make_cfg(tmp_path / "plain"))
    assert plain["bn_recalibrated_batches"] == 0
