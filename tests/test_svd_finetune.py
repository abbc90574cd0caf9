import copy
import csv
import io

import pytest
import torch
import torch.nn.functional as F

import lrtrain as lr
from lrtrain import models
from lrtrain.config import resolve
from lrtrain.layers import LowRankConv2d
from lrtrain.methods import create_method
from lrtrain.methods.svd_finetune import SVDFinetune
from lrtrain.train.trainer import Trainer

SMALL = (1, 3, 8, 8)


def _net(seed=0, classes=10):
    torch.manual_seed(seed)
    return models.create("resnet20", num_classes=classes, width=4)


def _steps(method, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(method.model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(n):
        x, y = torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)
        F.cross_entropy(method.model(x), y).backward()
        method.before_step(); opt.step(); opt.zero_grad(); method.after_step()
        if method.rebuild_optimizer:
            opt = torch.optim.SGD(method.model.parameters(), lr=0.05, momentum=0.9)
            method.rebuild_optimizer = False


def test_swaps_at_dense_fraction_of_the_steps_and_meets_the_flops_budget():
    model = _net()
    dense = lr.count(model, SMALL).flops
    method = create_method("svd_finetune", model, rank="flops:0.45", input_size=list(SMALL))
    method.setup(steps_per_epoch=2, total_steps=8)  # 4 epochs: dense for 2
    _steps(method, 3)
    assert not method.swapped and method.ranks() == {}
    _steps(method, 1)
    assert method.swapped and method.step == 4
    flops = lr.count(method.model, SMALL).flops
    assert 0.40 * dense < flops <= 0.45 * dense
    assert set(method.ranks()) == {n for n, m in method.model.named_modules() if isinstance(m, LowRankConv2d)}
    assert {r["layer"] for r in method.rank_log} == set(method.ranks()) and {r["step"] for r in method.rank_log} == {4}
    assert "fc" not in method.ranks()  # the classifier stays dense unless linear=True
    assert method.finalize() is method.model



@pytest.mark.parametrize("fraction, epochs, dense_epochs", [
    (0.5, 5, 3), (0.5, 3, 2), (0.5, 4, 2),  # halves round up, not to the even number
    (0.95, 10, 9),                           # some fine-tuning is left whatever the fraction below 1
    (0.5, 1, 0), (0.2, 2, 0),                # no dense epoch: the swap comes before the first step
])
def test_the_dense_phase_is_whole_epochs_rounded_half_up_with_one_left_to_fine_tune(fraction, epochs, dense_epochs):
    method = create_method("svd_finetune", _net(), rank="flops:0.45", dense_fraction=fraction, input_size=list(SMALL))
    method.setup(steps_per_epoch=3, total_steps=3 * epochs)
    assert method.swap_step == 3 * dense_epochs
    assert method.swapped == (dense_epochs == 0) and not method.rebuild_optimizer
    if dense_epochs == 0:
        assert {r["step"] for r in method.rank_log} == {0}


def test_init_loads_pretrained_weights_and_swaps_at_construction(tmp_path):
    """With `init`, the model swapped at construction is the *pretrained* one factorized (at a rank that
    factorizes: the same as `lr.factorize` of the pretrained model gives), not its own initialization."""
    pretrained = _net(seed=1).eval()
    path = tmp_path / "dense.pt"
    torch.save({"model": pretrained.state_dict()}, path)
    model = _net(seed=2)
    method = SVDFinetune(model, rank="flops:0.5", init=str(path), input_size=SMALL)
    assert method.swapped and method.dense_fraction == 0.0 and not method.rebuild_optimizer
    expected = lr.factorize(copy.deepcopy(pretrained), rank="flops:0.5", input_size=SMALL, linear=False)
    layers = {n: m.rank for n, m in model.named_modules() if isinstance(m, LowRankConv2d)}
    assert layers and layers == {n: m.rank for n, m in expected.named_modules() if isinstance(m, LowRankConv2d)}
    assert method.ranks() == layers
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        out = model.eval()(x)
        torch.testing.assert_close(out, expected(x), rtol=1e-5, atol=1e-6)
        assert not torch.allclose(out, pretrained(x), rtol=1e-3, atol=1e-4)  # truncated: not the dense function
    with pytest.raises(ValueError, match="do not fit"):
        SVDFinetune(models.create("resnet20", width=8), init=str(path), input_size=SMALL)


def test_finalize_before_the_swap_factorizes_without_fine_tuning():
    method = SVDFinetune(_net(), rank="fixed:2", scheme="spatial", input_size=SMALL)
    compact = method.finalize()
    layers = [m for m in compact.modules() if isinstance(m, LowRankConv2d)]
    assert layers and all(m.rank == 2 and m.scheme.name == "spatial" for m in layers)


def test_state_round_trip_after_the_swap_rebuilds_the_structure_tucker2():
    method = SVDFinetune(_net(), rank="energy:0.8", scheme="tucker2", input_size=SMALL)
    method.setup(steps_per_epoch=1, total_steps=4)
    _steps(method, 2)
    assert method.swapped and method.bn_stale  # swapped after step 2: BatchNorm statistics are stale
    _steps(method, 1)
    assert not method.bn_stale
    buf = io.BytesIO()
    torch.save({"method": method.state_dict(), "model": method.model.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    fresh = SVDFinetune(_net(seed=5), rank="energy:0.8", scheme="tucker2", input_size=SMALL)
    fresh.setup(steps_per_epoch=1, total_steps=4)
    fresh.load_state_dict(saved["method"])
    fresh.model.load_state_dict(saved["model"])  # fits: the factorized structure was rebuilt first
    assert fresh.swapped and fresh.step == 3 and fresh.ranks() == method.ranks()
    assert any(isinstance(r, tuple) for r in fresh.ranks().values())
    assert not fresh.rebuild_optimizer and fresh.rank_log == []
    assert not fresh.bn_stale  # the swap happened at step 2, not at the resumed step


def _config(out_dir):
    return resolve({
        "out_dir": str(out_dir),
        "data": {"name": "sample", "train_size": 64, "test_size": 32, "image_size": 8, "batch_size": 16},
        "train": {"epochs": 4, "progress": False, "device": "cpu"},
        "method": {"name": "svd_finetune", "rank": "flops:0.5", "input_size": [1, 3, 8, 8]},
    })


def test_trainer_run_resumed_after_the_swap_equals_the_uninterrupted_run(tmp_path, capsys):
    # 4 steps per epoch, 4 epochs: the swap is after step 8, the interruption at step 10
    whole = Trainer(_config(tmp_path / "whole"), model=_net()).fit()
    stopped = Trainer(_config(tmp_path / "parts"), model=_net()).fit(until_step=10)
    assert stopped == {"finished": False, "step": 10, "checkpoint": stopped["checkpoint"]}
    resumed_trainer = Trainer(_config(tmp_path / "parts"), model=_net())
    resumed = resumed_trainer.fit(resume=True)
    assert resumed["ranks"] == whole["ranks"] and resumed["compact"] == whole["compact"]
    assert resumed["final_acc"] == whole["final_acc"]
    assert resumed["final_loss"] == pytest.approx(whole["final_loss"], rel=1e-6)
    assert whole["compact"]["flops"] <= 0.5 * whole["dense"]["flops"]
    a, b = (torch.load(tmp_path / d / "compact.pt", weights_only=True)["state_dict"] for d in ("whole", "parts"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


def test_the_logged_learning_rate_of_the_swap_epoch_is_the_schedules(tmp_path):
    cfg = _config(tmp_path)
    cfg["schedule"]["name"] = "cosine"
    trainer = Trainer(cfg, model=_net())
    trainer.fit()  # 4 steps per epoch, the swap (and the optimizer's rebuild) after step 8
    with open(tmp_path / "metrics.csv", newline="") as f:
        logged = [float(r["lr"]) for r in csv.DictReader(f)]
    expected = [cfg["optim"]["lr"] * trainer.schedule(4 * epoch - 1) for epoch in (1, 2, 3, 4)]
    assert logged == pytest.approx(expected)
    assert logged[1] < 0.9 * cfg["optim"]["lr"]  # not the rebuilt optimizer's base rate


@pytest.mark.parametrize("rank,message", [("flops:0.03", "unreachable"),
                                          ({"layer1.0.conv1": 99}, "out of range")])
def test_an_impossible_rank_is_refused_at_construction_not_at_the_swap(rank, message):
    with pytest.raises(ValueError, match=f"SVDFinetune: rank .*{message}"):
        SVDFinetune(models.create("resnet20"), rank=rank)
