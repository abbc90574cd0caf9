"""`lrtrain info` and `lrtrain compress`: tables, compact models from runs, and their errors."""

import re

import pytest
import torch

import lrtrain as lr
from lrtrain import cli
from lrtrain.config import resolve
from lrtrain.layers import LowRankConv2d
from lrtrain.train import Trainer


def test_info_lists_every_layer_with_its_decision(capsys):
    assert cli.main(["info", "resnet20", "--rank", "flops:0.45", "--scheme", "spatial", "--skip", "fc"]) == 0
    out = capsys.readouterr().out
    assert "layer3.2.conv2" in out and "in the skip list" in out
    total = out.strip().splitlines()[-1]
    before, after = [float(x) for x in total.split("MACs ")[1].split(" (")[0].replace(" M", "").split(" -> ")]
    assert before == pytest.approx(lr.count(lr.models.create("resnet20")).flops / 1e6, abs=0.01)
    assert after <= 0.45 * before + 0.01


@pytest.fixture(scope="module")
def dense_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    cfg = resolve({
        "out_dir": str(root), "model": {"name": "resnet20"},
        "data": {"name": "sample", "train_size": 64, "test_size": 32, "image_size": 16, "batch_size": 32},
        "schedule": {"name": "constant"}, "train": {"epochs": 1, "progress": False},
    })
    torch.manual_seed(0)
    Trainer(cfg).fit()
    return root


def test_compress_of_a_finished_dense_run_takes_its_recalibrated_batchnorm(tmp_path, capsys):
    cfg = resolve({
        "out_dir": str(tmp_path / "run"), "model": {"name": "resnet20"},
        "data": {"name": "sample", "train_size": 64, "test_size": 32, "image_size": 8, "batch_size": 32},
        "schedule": {"name": "constant"}, "train": {"epochs": 1, "progress": False, "bn_recalibrate": 2},
    })
    torch.manual_seed(0)
    Trainer(cfg).fit()
    out = tmp_path / "c.pt"
    assert cli.main(["compress", str(tmp_path / "run"), "--rank", "ratio:0.5", "--skip", "conv1", "-o", str(out)]) == 0
    capsys.readouterr()
    finished = lr.load(tmp_path / "run" / "compact.pt").bn1.running_mean
    checkpoint = torch.load(sorted((tmp_path / "run" / "checkpoints").glob("step_*.pt"))[-1],
                            weights_only=True)["model"]["bn1.running_mean"]
    assert not torch.equal(finished, checkpoint)  # re-estimated after training: what the run scored
    assert torch.equal(lr.load(out).bn1.running_mean, finished)


def test_compress_a_run_writes_a_compact_model_that_loads_back(dense_run, tmp_path, capsys):
    out = tmp_path / "compact.pt"
    assert cli.main(["compress", str(dense_run), "--rank", "flops:0.5", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "factorized" in printed and "x fewer" in printed
    compact = lr.load(out)
    assert any(isinstance(m, LowRankConv2d) for m in compact.modules())
    assert lr.count(compact).flops <= 0.5 * lr.count(lr.models.create("resnet20")).flops
    capsys.readouterr()
    assert cli.main(["compress", str(out), "--rank", "flops:0.3", "-o", str(tmp_path / "again.pt")]) == 2
    assert re.search(r"is already a compact model \(\d+ factorized layers, e.g. [\w.]+\): compress the dense",
                     capsys.readouterr().err)
    assert not (tmp_path / "again.pt").exists()
    # nor does info plan on it (it counted the layers left dense as the whole model)
    assert cli.main(["info", str(out), "--rank", "flops:0.5"]) == 2
    assert re.search(r"is already a compact model \(\d+ factorized layers, e.g. [\w.]+\): --rank plans",
                     capsys.readouterr().err)
    assert cli.main(["predict", str(tmp_path / "nope"), str(out)]) == 2
    assert "no such run directory, compact model or checkpoint: " in capsys.readouterr().err


def test_compress_at_full_energy_keeps_the_function(dense_run, tmp_path):
    from lrtrain.inspection import compress, load_trained

    out = tmp_path / "full.pt"
    result = compress(dense_run, out, rank="energy:1.0")
    assert result["drift"] < 1e-4
    dense, *_ = load_trained(dense_run)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(lr.load(out)(x), dense(x), atol=1e-4, rtol=1e-4)


def test_a_finished_run_without_checkpoints_is_read_from_its_compact_model(dense_run, tmp_path):
    from lrtrain.inspection import load_trained

    import shutil

    run = tmp_path / "run"
    shutil.copytree(dense_run, run)
    shutil.rmtree(run / "checkpoints")
    model, name, classes, size, names = load_trained(run)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(model(x), load_trained(dense_run)[0](x), atol=1e-5, rtol=0)
    assert (name, classes) == ("resnet20", 10) and list(names) == ["normalize", "trained_on"]  # the sample set: no classes
    assert names == load_trained(dense_run)[4]  # the checkpoint and the compact model record the same
    (run / "compact.pt").unlink()
    with pytest.raises(FileNotFoundError, match="no checkpoint in .* and no compact.pt"):
        load_trained(run)


@pytest.mark.parametrize("args,message", [
    (["info", "resnet20", "--scheme", "chanel"], "did you mean 'channel'"),
    (["info", "resnet20", "--input-size", "1", "1", "32", "32"], "input_size"),
    (["compress", "/no/such/run", "-o", "x.pt"], "no such run directory, compact model or checkpoint: /no/such/run"),
])
def test_user_errors_are_one_line(args, message, capsys):
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_compress_refuses_a_checkpoint_of_another_model(dense_run, tmp_path, capsys):
    from lrtrain.train.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint

    state = load_checkpoint(list_checkpoints(dense_run / "checkpoints")[-1])
    state["config"]["model"]["name"] = "resnet32"
    save_checkpoint(tmp_path, 1, state, keep=1)
    assert cli.main(["compress", str(tmp_path / "step_000000001.pt"), "-o", str(tmp_path / "c.pt")]) == 2
    err = capsys.readouterr().err
    assert "do not fit a dense resnet32 (missing: layer1.3" in err and "older lrtrain" not in err
    del state["layers"]  # as written before checkpoints described their layers
    save_checkpoint(tmp_path, 1, state, keep=1)
    assert cli.main(["compress", str(tmp_path / "step_000000001.pt"), "-o", str(tmp_path / "c.pt")]) == 2
    assert "older lrtrain of a run whose method changed the layers (dense)" in capsys.readouterr().err


def test_a_model_with_more_classes_than_its_data_compresses_and_loads_back(tmp_path):
    from lrtrain.inspection import load_trained

    cfg = resolve({
        "out_dir": str(tmp_path / "run"), "model": {"name": "resnet20", "num_classes": 12},
        "data": {"name": "sample", "train_size": 32, "test_size": 16, "image_size": 8, "batch_size": 16,
                 "num_classes": 4},
        "schedule": {"name": "constant"}, "train": {"epochs": 1, "progress": False},
    })
    torch.manual_seed(0)
    summary = Trainer(cfg).fit()
    assert summary["num_classes"] == 12
    assert lr.load(tmp_path / "run" / "compact.pt").fc.out_features == 12
    model, name, classes, *_ = load_trained(tmp_path / "run")  # not the data's 4 classes
    assert (name, classes, model.fc.out_features) == ("resnet20", 12, 12)


def test_info_of_a_trained_model_lists_what_each_layer_became(dense_run, tmp_path, capsys):
    from lrtrain import cli

    out = tmp_path / "c.pt"
    assert cli.main(["compress", str(dense_run), "--rank", "ratio:0.5", "--skip", "conv1", "-o", str(out)]) == 0
    capsys.readouterr()
    assert cli.main(["info", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    compact = lr.load(out)
    assert lines[0] == f"{out} (resnet20, 10 classes, input 1x3x16x16)"
    rows = {line.split()[0]: line for line in lines[2:-2]}
    assert "dense" in rows["conv1"] and len(rows) == len(lr.count(lr.models.create("resnet20")).layers)
    layer = compact.layer2[1].conv1
    assert f"channel rank {layer.rank}/{layer.max_rank}" in rows["layer2.1.conv1"] and layer.max_rank == 32
    macs_now = sum(int(row.split()[-1].replace(",", "")) for row in rows.values())
    assert macs_now == lr.count(compact, (1, 3, 16, 16)).flops
    factorized = sum(isinstance(m, (lr.LowRankConv2d, lr.LowRankLinear)) for m in compact.modules())
    assert lines[-2].startswith(f"{factorized} of {len(rows)} layers factorized; MACs ")
    # compress kept the run's input normalization (the generated training images' statistics)
    mean = [f"{v:.4f}" for v in torch.load(out, weights_only=True)["arch"]["normalize"]["mean"]]
    assert lines[-1] == f"input: RGB scaled to 0-1, then (x - mean) / std per channel, mean [{', '.join(mean)}], " \
                        f"std [{lines[-1].split('std [')[1]}" and float(mean[0]) > 0.1
    # with --rank: what the policy would make of the trained weights (here the dense run's checkpoint)
    assert cli.main(["info", str(dense_run), "--rank", "flops:0.5", "--input-size", "1", "3", "16", "16"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("conv/linear MACs ") and float(last.split("(")[1].split("x")[0]) >= 2.0
    # without --rank: the MACs at another input size; the decomposition's settings refused, not ignored
    assert cli.main(["info", str(out), "--input-size", "1", "3", "32", "32"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == f"{out} (resnet20, 10 classes, input 1x3x32x32)"
    assert sum(int(line.split()[-1].replace(",", "")) for line in lines[2:-2]) == lr.count(compact, (1, 3, 32, 32)).flops
    for flags, said in ((["--scheme", "channel"], "--scheme plan"), (["--skip", "fc", "--"], "--skip plan"),
                        (["--num-classes", "10"], "--num-classes is for a model name")):
        assert cli.main(["info", *flags, str(out)]) == 2
        assert said in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
@pytest.mark.parametrize("method", [{"name": "elrt", "rank": "flops:0.5"},
                                    {"name": "svd_finetune", "rank": "ratio:0.5", "linear": True}])
def test_a_checkpoint_of_a_run_whose_method_changed_the_layers_rebuilds_its_model(tmp_path, method, capsys):
    """ELRT trains factorized layers from the start, SVD + fine-tune after its swap: their checkpoints say
    how the layers differ from the registry model, so they load without the method."""
    from lrtrain import cli
    from lrtrain.inspection import load_trained
    from lrtrain.train.checkpoint import list_checkpoints, load_checkpoint

    cfg = resolve({
        "out_dir": str(tmp_path / "run"), "model": {"name": "resnet20"}, "method": method,
        "data": {"name": "sample", "train_size": 32, "test_size": 16, "image_size": 8, "batch_size": 16},
        "schedule": {"name": "constant"}, "train": {"epochs": 2, "progress": False},
    })
    torch.manual_seed(0)
    trainer = Trainer(cfg)
    trainer.fit()
    newest = list_checkpoints(tmp_path / "run" / "checkpoints")[-1]
    state = load_checkpoint(newest)
    assert state["layers"] and state["num_classes"] == 10  # also where the classifier itself is factorized
    if method.get("linear"):
        assert state["layers"]["fc"]["type"] == "LowRankLinear"
    model, name, classes, size, _ = load_trained(newest)
    assert (name, classes, size) == ("resnet20", 10, (1, 3, 8, 8))
    trained = trainer.model.cpu().eval()
    assert [type(m) for m in model.modules()] == [type(m) for m in trained.modules()]
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(x), trained(x))
    exported = tmp_path / "model.ts"  # the checkpoint exports as it is, without compress
    assert cli.main(["export", str(newest), "--format", "torchscript", "-o", str(exported), "--normalize"]) == 0
    capsys.readouterr()
    record = load_checkpoint(newest)["normalize"]
    mean, std = (torch.tensor(record[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    pixels = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(exported))(pixels), trained((pixels - mean) / std),
                                   atol=1e-5, rtol=1e-4)
    assert cli.main(["info", str(newest)]) == 0
    table = capsys.readouterr().out
    scheme = "tucker2" if method["name"] == "elrt" else "channel"
    assert f"{scheme} rank " in table and "layers factorized" in table


def test_writing_a_checkpoint_draws_no_random_numbers(tmp_path):
    """A checkpoint describes the model's layers against a freshly built registry model: building it must
    not move the RNG that training goes on drawing from (a resumed run restores the state saved before)."""
    cfg = resolve({
        "out_dir": str(tmp_path / "run"), "model": {"name": "resnet20"}, "method": {"name": "elrt", "rank": "flops:0.5"},
        "data": {"name": "sample", "train_size": 32, "test_size": 16, "image_size": 8, "batch_size": 16},
        "train": {"epochs": 1, "progress": False},
    })
    trainer = Trainer(cfg)
    before = torch.get_rng_state()
    trainer.save_checkpoint()
    assert torch.equal(torch.get_rng_state(), before)


def test_a_checkpoint_of_a_model_given_as_a_module_says_it_cannot_be_rebuilt(tmp_path, capsys):
    from lrtrain.train.checkpoint import list_checkpoints

    cfg = resolve({
        "out_dir": str(tmp_path / "run"),
        "data": {"name": "sample", "train_size": 32, "test_size": 16, "image_size": 8, "batch_size": 16},
        "train": {"epochs": 1, "progress": False},
    })
    Trainer(cfg, model=torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 10))).fit()
    newest = list_checkpoints(tmp_path / "run" / "checkpoints")[-1]
    assert cli.main(["evaluate", str(newest)]) == 2
    assert "is a checkpoint of a model given to the trainer as a module, which lrtrain cannot rebuild" in \
        capsys.readouterr().err


def test_info_of_a_checkpoint_gives_the_rank_of_layers_trained_low_rank_in_dense_form(tmp_path, capsys):
    """LRPET's projected convs are dense convs of lower rank: they showed as plain "dense"."""
    from lrtrain import cli
    from lrtrain.train.checkpoint import list_checkpoints

    cfg = resolve({
        "out_dir": str(tmp_path / "run"), "model": {"name": "resnet20"}, "method": {"name": "lrpet", "goal": 0.5},
        "data": {"name": "sample", "train_size": 64, "test_size": 32, "image_size": 8, "batch_size": 32},
        "train": {"epochs": 1, "progress": False},
    })
    torch.manual_seed(0)
    trainer = Trainer(cfg)
    trainer.fit()
    ranks = trainer.method.ranks()
    capsys.readouterr()
    assert cli.main(["info", str(list_checkpoints(tmp_path / "run" / "checkpoints")[-1])]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.strip().splitlines()[2:-2]}
    assert f"dense, rank {ranks['layer2.1.conv1']}/32 " in rows["layer2.1.conv1"] and ranks["layer2.1.conv1"] < 32
    assert f"dense, rank {ranks['conv1']}/16 " in rows["conv1"]
    assert "rank" not in rows["fc"]  # not projected: full rank, plain "dense"
    model = lr.models.create("resnet20")
    with torch.no_grad():
        model.layer1[0].conv1.weight[0, 0, 0, 0] = float("nan")  # a diverged weight: said, not a traceback
    lr.save(model, tmp_path / "nan.pt", "resnet20", 10)
    capsys.readouterr()
    assert cli.main(["info", str(tmp_path / "nan.pt")]) == 0
    assert "dense (NaN/Inf weights)" in capsys.readouterr().out


def test_info_of_a_spatial_trp_checkpoint_gives_the_spatial_forms_rank(tmp_path, capsys):
    """A spatial-scheme TRP run projects its weights' in·k × out·k forms: read in the channel form, their
    rank looked full."""
    from lrtrain import cli
    from lrtrain.train.checkpoint import list_checkpoints

    cfg = resolve({
        "out_dir": str(tmp_path / "run"), "model": {"name": "resnet20"},
        "method": {"name": "trp", "scheme": "spatial", "period": 2, "energy": 0.5, "nuclear": 0.0},
        "data": {"name": "sample", "train_size": 64, "test_size": 32, "image_size": 8, "batch_size": 32},
        "train": {"epochs": 1, "progress": False},
    })
    torch.manual_seed(0)
    trainer = Trainer(cfg)
    trainer.fit()
    rank = trainer.method.ranks()["layer2.1.conv1"]
    capsys.readouterr()
    assert cli.main(["info", str(list_checkpoints(tmp_path / "run" / "checkpoints")[-1])]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.strip().splitlines()[2:-2]}
    assert rank < 96 and f"dense, rank {rank}/96 " in rows["layer2.1.conv1"]  # min(32·3, 32·3)
