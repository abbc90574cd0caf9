"""NaN/Inf weights met by a method's SVD: a clear error naming the layer, and a run that stops on it
pointing at its last good checkpoint. (The SVD fallbacks themselves are in test_linalg.py; a NaN loss
and NaN weights at a checkpoint in test_trainer.py.)"""

import textwrap

import pytest
import torch
from torch import nn

import lrtrain as lr
from lrtrain import cli
from lrtrain.config import resolve
from lrtrain.linalg import NonFiniteError
from lrtrain.methods import register_method
from lrtrain.methods.trp import TRP
from lrtrain.train import DivergenceError, Trainer
from lrtrain.train.checkpoint import list_checkpoints
from test_trainer import PoisonAt  # noqa: F401  (registers the "test_nan" method)

SMALL = (1, 3, 8, 8)


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def _poison(model, name):
    with torch.no_grad():
        model.get_submodule(name).weight[0, 0, 0, 0] = float("nan")


@pytest.mark.parametrize("make", [
    lambda m: lr.TRP(m, period=0, input_size=SMALL),
    lambda m: lr.TRP(m, scheme="decoupled", period=0, input_size=SMALL),
    lambda m: lr.LRPET(m, goal=0.5, period=10, input_size=SMALL),
])
def test_a_projection_on_a_nan_weight_names_the_layer(make):
    model = _net()
    method = make(model)
    _poison(model, "6")  # layers 3 and 6 have the same shape: one batched SVD, one culprit
    with pytest.raises(NonFiniteError, match=r"^6: the weight contains NaN or Inf values, so it has no SVD$"):
        method.project()


@pytest.mark.parametrize("rank", ["energy:0.9", "ratio:0.5"])  # with and without spectra
def test_factorizing_a_nan_weight_names_the_layer(rank):
    model = _net()
    _poison(model, "3")
    with pytest.raises(NonFiniteError, match=r"^3: the weight contains NaN or Inf values"):
        lr.factorize(model, rank=rank, input_size=SMALL)
    method = lr.SVDFinetune(_net(), rank=rank, dense_fraction=0.5, input_size=SMALL)
    _poison(method.model, "3")
    with pytest.raises(NonFiniteError, match=r"^3: the weight contains NaN"):
        method.swap()


@register_method("test_trp_poisoned")
class PoisonedTRP(TRP):
    """TRP whose layer `layer` turns NaN just before the projection of step `at` (its loss stays finite
    until then: only the projection's SVD can see it)."""

    def __init__(self, model, at: int, layer: str = "6", **kw):
        super().__init__(model, **kw)
        self.at, self.layer = at, layer

    def after_step(self):
        if self.step + 1 == self.at:
            _poison(self.model, self.layer)
        super().after_step()


def _cfg(tmp_path):
    return resolve({
        "out_dir": str(tmp_path / "run"),
        "data": {"name": "sample", "train_size": 64, "test_size": 32, "image_size": 8, "padding": 1,
                 "num_classes": 4, "batch_size": 16},
        "train": {"epochs": 2, "progress": False, "checkpoint_every": 2},
        "method": {"name": "test_trp_poisoned", "at": 6, "period": 3, "input_size": list(SMALL)},
    })


def test_a_run_whose_projection_meets_nan_stops_at_the_last_good_checkpoint(tmp_path):
    with pytest.raises(DivergenceError) as err:
        Trainer(_cfg(tmp_path), model=_net()).fit()
    kept = list_checkpoints(tmp_path / "run" / "checkpoints")
    assert [p.name for p in kept] == ["step_000000002.pt", "step_000000004.pt"]
    message = str(err.value)
    assert message.startswith("training diverged: 6: the weight contains NaN or Inf values")
    assert f"the last good checkpoint is {kept[-1]}" in message and "Lower optim.lr" in message


def test_the_cli_reports_divergence_in_one_line_with_status_1(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(textwrap.dedent("""
        model: {name: resnet20}
        data: {name: sample, train_size: 64, test_size: 32, image_size: 8, num_classes: 4, batch_size: 16}
        train: {epochs: 1, progress: false, checkpoint_every: 1}
        method: {name: test_trp_poisoned, at: 3, layer: layer2.1.conv1, period: 3, input_size: [1, 3, 8, 8]}
    """))
    assert cli.main(["train", str(recipe), "--out-dir", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("lrtrain: error: training diverged: layer2.1.conv1: the weight contains NaN or Inf")
    assert f"the last good checkpoint is {tmp_path / 'run' / 'checkpoints' / 'step_000000002.pt'}" in err


def test_nan_found_at_an_epoch_end_checkpoint_names_that_epoch(tmp_path):
    cfg = _cfg(tmp_path)
    cfg["train"]["checkpoint_every"] = 0
    cfg["method"] = {"name": "test_nan", "at": 4, "statistics": True}  # the last step of epoch 1 (4 steps each)
    with pytest.raises(DivergenceError, match=r"the weights became NaN/Inf by step 4 \(end of epoch 1\)"):
        Trainer(cfg, model=_net()).fit()
