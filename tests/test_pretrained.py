"""Starting from trained weights: the files accepted, the errors on the others, the trainer's model.weights."""

import pytest
import torch
from torch import nn

from lrtrain.config import resolve
from lrtrain.pretrained import load_pretrained
from lrtrain.train import Trainer


def _net(seed, width=8):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 4))


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("wrap", [lambda sd: sd, lambda sd: {"model": sd, "step": 3},
                                  lambda sd: {"format": 1, "arch": {}, "state_dict": sd}],
                         ids=["state_dict", "checkpoint", "compact"])
def test_weights_load_from_a_state_dict_or_a_file_holding_one(tmp_path, wrap):
    trained, fresh = _net(0), _net(1)
    torch.save(wrap(trained.state_dict()), tmp_path / "w.pt")
    assert not _same(trained, fresh)
    load_pretrained(fresh, tmp_path / "w.pt")
    assert _same(trained, fresh)


def test_bad_weight_files_say_what_is_wrong(tmp_path):
    model = _net(0)
    with pytest.raises(ValueError, match=r"model.weights: no file '.*nope.pt'"):
        load_pretrained(model, tmp_path / "nope.pt", owner="model.weights")
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"^weights: cannot read weights file .*junk.pt: not a PyTorch file"):
        load_pretrained(model, tmp_path / "junk.pt")
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "meta.pt")
    with pytest.raises(ValueError, match="holds no state_dict"):
        load_pretrained(model, tmp_path / "meta.pt")
    wide = _net(2, width=16).state_dict()
    wide["extra.weight"] = torch.zeros(1)
    torch.save(wide, tmp_path / "wide.pt")
    before = [t.clone() for t in model.state_dict().values()]
    with pytest.raises(ValueError, match=r"do not fit Sequential \(file vs model\): unexpected: extra.weight; "
                                         r"other shapes: 0.weight \(16, 3, 3, 3\) vs \(8, 3, 3, 3\), .* and 3 more"):
        load_pretrained(model, tmp_path / "wide.pt")
    # nothing half-loaded (the classifier's bias, 4 values in both, would have been copied)
    assert all(torch.equal(a, b) for a, b in zip(before, model.state_dict().values()))
    del wide["0.weight"]
    torch.save(wide, tmp_path / "short.pt")
    with pytest.raises(ValueError, match=r"missing: 0.weight;"):
        load_pretrained(model, tmp_path / "short.pt")


def test_the_weights_of_another_model_say_which_model_they_are(tmp_path):
    import lrtrain as lr

    resnet20 = lr.models.create("resnet20")
    checkpoint = tmp_path / "step_1.pt"
    torch.save({"config": {"model": {"name": "resnet56"}}, "model": lr.models.create("resnet56").state_dict()},
               checkpoint)
    with pytest.raises(ValueError, match=r"step_1.pt' \(a resnet56's, a lrtrain checkpoint\) do not fit CifarResNet"):
        load_pretrained(resnet20, checkpoint)
    compact = tmp_path / "compact.pt"
    lr.save(lr.factorize(lr.models.create("resnet20"), rank=lr.FixedRank(2)), compact, "resnet20", 10)
    with pytest.raises(ValueError, match=r"\(a resnet20's, a compact model with factorized layers: start from a "
                                         r"dense model's weights"):
        load_pretrained(resnet20, compact)


def test_weights_with_another_number_of_classes_load_all_but_the_classifier_with_a_warning(tmp_path):
    trained = _net(0)
    trained[-1] = nn.Linear(8, 1000)  # e.g. ImageNet's classes, for a data set of 4
    torch.save(trained.state_dict(), tmp_path / "w.pt")
    model = _net(1)
    fresh_head = [t.clone() for t in model[-1].parameters()]
    with pytest.warns(UserWarning, match=r"model.weights: the classifier 5 has 1000 outputs in .*w.pt' and 4 here: "
                                         r"every other weight is loaded, 5 starts freshly initialized \(to load it "
                                         r"too, set model.num_classes=1000\)"):
        load_pretrained(model, tmp_path / "w.pt", owner="model.weights")
    assert all(torch.equal(a, b) for a, b in zip(model[:-1].state_dict().values(), trained[:-1].state_dict().values()))
    assert all(torch.equal(a, b) for a, b in zip(model[-1].parameters(), fresh_head))
    trained[0] = nn.Conv2d(3, 8, 5, padding=2)  # another difference besides: nothing is loaded
    torch.save(trained.state_dict(), tmp_path / "w.pt")
    with pytest.raises(ValueError, match=r"other shapes: 0.weight \(8, 3, 5, 5\) vs \(8, 3, 3, 3\), 5.weight"):
        load_pretrained(model, tmp_path / "w.pt")


def test_the_trainer_starts_the_method_from_model_weights(tmp_path):
    trained = _net(0)
    torch.save(trained.state_dict(), tmp_path / "w.pt")
    cfg = resolve({"out_dir": str(tmp_path / "run"), "model": {"weights": str(tmp_path / "w.pt")},
                   "data": {"name": "sample", "train_size": 32, "test_size": 32, "image_size": 8, "num_classes": 4,
                            "batch_size": 16},
                   "train": {"epochs": 1, "progress": False, "device": "cpu"}})
    trainer = Trainer(cfg, model=_net(1))
    assert _same(trained, trainer.model)
    cfg["model"]["weights"] = str(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="model.weights: no file"):
        Trainer(cfg, model=_net(1))


def test_a_resume_does_not_need_the_weights_file_it_started_from(tmp_path):
    torch.save(_net(0).state_dict(), tmp_path / "w.pt")
    cfg = resolve({"out_dir": str(tmp_path / "run"), "model": {"weights": str(tmp_path / "w.pt")},
                   "data": {"name": "sample", "train_size": 32, "test_size": 32, "image_size": 8, "num_classes": 4,
                            "batch_size": 16},
                   "train": {"epochs": 2, "progress": False, "device": "cpu"}})
    first = Trainer(cfg, model=_net(1)).fit(until_step=2)
    assert not first["finished"]
    (tmp_path / "w.pt").unlink()
    resumed = Trainer(cfg, model=_net(1))
    assert resumed.fit(resume=True)["finished"] and resumed.step == 4
    with pytest.raises(ValueError, match="model.weights: no file"):  # starting the run again needs them
        Trainer(cfg, model=_net(1)).fit(overwrite=True)
    assert list((tmp_path / "run" / "checkpoints").glob("step_*.pt"))  # and that refusal deleted nothing
