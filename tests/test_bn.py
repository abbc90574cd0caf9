"""BatchNorm recalibration of a compact model before its final evaluation."""

import pytest
import torch
from torch import nn

from lrtrain.train.bn import recalibrate_bn
from test_trainer import TinyNet, make_cfg, fit


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


def test_recalibration_restores_each_modules_own_mode():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5))
    model[2].eval()  # a part kept in eval mode on purpose
    recalibrate_bn(model, iter([(torch.randn(8, 3, 6, 6), None)]), steps=1)
    assert [m.training for m in model.modules()] == [True, True, True, False]


def _saved_compact(run_dir):
    """The compact model as compact.pt holds it (TinyNet is given as a module: its weights and buffers)."""
    model = TinyNet()
    model.load_state_dict(torch.load(run_dir / "compact.pt", weights_only=True)["state_dict"])
    return model


def test_the_trainer_recalibrates_the_compact_model_when_asked(tmp_path):
    """The final scores are those of the compact model with its re-estimated statistics (the ones saved in
    compact.pt), not of the same weights with the statistics training left, which a run without
    recalibration (the same training) keeps."""
    trainer, summary = fit(make_cfg(tmp_path, train={"bn_recalibrate": 3}))
    assert summary["bn_recalibrated_batches"] == 3
    _, plain = fit(make_cfg(tmp_path / "plain"))
    assert plain["bn_recalibrated_batches"] == 0
    saved, stale = _saved_compact(tmp_path / "run"), _saved_compact(tmp_path / "plain" / "run")
    # the same weights, other running statistics: only the recalibration differs between the two runs
    for (name, a), b in zip(saved.state_dict().items(), stale.state_dict().values()):
        if name.endswith(("running_mean", "running_var")):
            assert not torch.allclose(a, b), name
        elif not name.endswith("num_batches_tracked"):  # a count: 3 batches against every training step
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    fresh_scores, stale_scores = trainer.evaluate(saved), trainer.evaluate(stale)
    assert summary["final_loss"] == pytest.approx(fresh_scores["test_loss"], rel=1e-6)
    assert summary["final_acc"] == pytest.approx(fresh_scores["test_acc"], rel=1e-6)
    assert summary["final_loss"] != pytest.approx(stale_scores["test_loss"], rel=1e-4)  # small, but scores are deterministic
    # before it recalibrated, the run scored the stale model: its last epoch's evaluation, and the plain run's
    assert trainer.history[-1]["test_loss"] == pytest.approx(stale_scores["test_loss"], rel=1e-6)
    assert plain["final_loss"] == pytest.approx(stale_scores["test_loss"], rel=1e-6)


def _lrpet_run(tmp_path, recalibrate):
    cfg = make_cfg(tmp_path, train={"bn_recalibrate": recalibrate},
                   method={"name": "lrpet", "goal": 0.6, "period": "epoch", "input_size": [1, 3, 12, 12]})
    return fit(cfg)


def test_an_epoch_end_right_after_a_projection_is_evaluated_with_fresh_statistics_on_a_copy(tmp_path):
    fresh, _ = _lrpet_run(tmp_path / "fresh", recalibrate=4)
    stale, _ = _lrpet_run(tmp_path / "stale", recalibrate=0)
    # the training model (weights and running statistics) is the same: only the evaluation differs
    for (name, a), b in zip(fresh.model.state_dict().items(), stale.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert fresh.method.bn_stale  # LRPET projected after the last step
    last_fresh, last_stale = fresh.history[-1], stale.history[-1]
    assert last_fresh["test_loss"] != last_stale["test_loss"]
    assert last_stale["test_loss"] == pytest.approx(stale.evaluate()["test_loss"], rel=1e-6)
    assert last_fresh["test_loss"] == pytest.approx(fresh.evaluate(fresh._fresh_bn_copy())["test_loss"], rel=1e-6)


def test_recalibration_leaves_the_random_streams_of_training_alone():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5))
    torch.manual_seed(0)
    state = torch.get_rng_state()
    recalibrate_bn(model, iter([(torch.ones(2, 3, 6, 6), None)] * 3), steps=3)
    assert torch.equal(torch.get_rng_state(), state)  # the dropout drew from a fork
