"""Two gloo processes on the CPU: DDP training equals one process, and ranks stay identical."""

import contextlib
import io
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from lrtrain.config import resolve
from lrtrain.methods import Method, register_method
from lrtrain.train import Trainer, broadcast_module_, distributed


class PlainNet(nn.Sequential):
    """No BatchNorm or Dropout: two ranks of 8 images then compute exactly what one process of 16 does."""

    def __init__(self):
        super().__init__(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))


@register_method("test_rank_noise")
class RankNoise(Method):
    """A projection that is NOT identical across ranks (noise seeded by the rank), logged at step 3."""

    def after_step(self):
        super().after_step()
        if self.step == 3:
            rank = dist.get_rank() if dist.is_initialized() else 0
            g = torch.Generator().manual_seed(rank)
            with torch.no_grad():
                for p in self.model.parameters():
                    p.add_(0.01 * torch.randn(p.shape, generator=g))
            self.rank_log.append({"step": self.step, "layer": "all", "rank": 1, "max_rank": 1})


def make_cfg(out_dir, method=None):
    return resolve({
        "out_dir": str(out_dir),
        "data": {"name": "sample", "train_size": 64, "test_size": 30, "image_size": 8, "num_classes": 4,
                 "batch_size": 16, "eval_batch_size": 8, "augment": False},
        "optim": {"lr": 0.05},
        "schedule": {"name": "constant"},
        "train": {"epochs": 2, "progress": False},
        "method": method or {"name": "test_rank_noise"},
    })


def _join(rank, world_size, port):
    """This spawned process as rank `rank` of `world_size` (the environment torchrun would set), one thread."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)


def _worker(rank, world_size, port, tmp_path):
    _join(rank, world_size, port)
    torch.manual_seed(0)
    trainer = Trainer(make_cfg(tmp_path / "ddp"), model=PlainNet())
    summary = trainer.fit()
    torch.save({"weights": trainer.model.state_dict(), "summary": summary,
                "steps_per_epoch": trainer.steps_per_epoch}, tmp_path / f"rank{rank}.pt")
    torch.manual_seed(100 + rank)
    different = nn.Linear(3, 2)
    broadcast_module_(different)
    torch.save(different.state_dict(), tmp_path / f"broadcast{rank}.pt")
    distributed.shutdown()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_two_gloo_ranks_train_like_one_process_and_stay_identical(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), tmp_path), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    torch.manual_seed(0)
    single = Trainer(make_cfg(tmp_path / "single"), model=PlainNet())
    summary = single.fit()

    assert [r["steps_per_epoch"] for r in ranks] == [4, 4]  # each rank: 32 images in batches of 8
    # The rank-dependent "projection" was broadcast from rank 0: the ranks are identical.
    for k, v in ranks[0]["weights"].items():
        assert torch.equal(v, ranks[1]["weights"][k])
    # ... and equal to one process with the full batch (rank 0's noise), up to float rounding.
    for k, v in single.model.state_dict().items():
        torch.testing.assert_close(ranks[0]["weights"][k], v, rtol=1e-4, atol=1e-5)
    # Evaluation is sharded and summed over ranks: the same accuracy over all 30 test images.
    assert ranks[0]["summary"]["final_acc"] == pytest.approx(summary["final_acc"])
    assert ranks[0]["summary"]["world_size"] == 2
    # Only rank 0 writes the run directory: one ranks.csv row, not two.
    assert (tmp_path / "ddp" / "ranks.csv").read_text().splitlines()[1:] == ["3,all,1,1"]

    broadcast = [torch.load(tmp_path / f"broadcast{r}.pt", weights_only=True) for r in range(2)]
    torch.manual_seed(100)
    reference = nn.Linear(3, 2).state_dict()
    for state in broadcast:
        assert all(torch.equal(state[k], reference[k]) for k in reference)


class NormNet(nn.Sequential):
    def __init__(self):
        super().__init__(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, stride=2), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))


def _lrpet_worker(rank, world_size, port, tmp_path):
    _join(rank, world_size, port)
    torch.manual_seed(0)
    method = {"name": "lrpet", "rank": "flops:0.5", "period": 2, "input_size": [1, 3, 8, 8]}
    trainer = Trainer(make_cfg(tmp_path / "lrpet", method), model=NormNet())
    summary = trainer.fit()
    with torch.no_grad():
        trainer.model[4].running_var.mul_(1 + rank)  # each process's statistics drift with its own batches
    trainer.method.project()
    torch.save({"summary": summary, "var": trainer.model[4].running_var.clone(), "ranks": trainer.method.ranks(),
                "weights": trainer.model.state_dict()}, tmp_path / f"lrpet{rank}.pt")
    distributed.shutdown()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_lrpet_under_ddp_rectifies_with_rank_0_statistics_so_every_process_picks_the_same_ranks(tmp_path):
    mp.spawn(_lrpet_worker, args=(2, _free_port(), tmp_path), nprocs=2, join=True)
    a, b = (torch.load(tmp_path / f"lrpet{r}.pt", weights_only=True) for r in range(2))
    torch.testing.assert_close(a["var"], b["var"], rtol=0, atol=0)
    assert a["ranks"] == b["ranks"] and a["summary"]["compact"] == b["summary"]["compact"]
    for k, v in a["weights"].items():
        assert torch.equal(v, b["weights"][k]), k


def _rng_worker(rank, world_size, port, tmp_path):
    _join(rank, world_size, port)
    torch.manual_seed(0)
    trainer = Trainer(make_cfg(tmp_path / "rng", {"name": "dense"}), model=PlainNet())
    torch.rand(1 + 5 * rank)  # each process's generator where its own draws left it
    own = torch.get_rng_state()
    path = trainer.save_checkpoint()
    dist.broadcast_object_list(box := [path])
    torch.rand(100)
    trainer.load_checkpoint(box[0])
    torch.save({"restored": torch.get_rng_state(), "own": own}, tmp_path / f"rng{rank}.pt")
    distributed.shutdown()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_a_ddp_resume_gives_each_process_back_its_own_random_state(tmp_path):
    mp.spawn(_rng_worker, args=(2, _free_port(), tmp_path), nprocs=2, join=True)
    a, b = (torch.load(tmp_path / f"rng{r}.pt", weights_only=True) for r in range(2))
    assert not torch.equal(a["own"], b["own"])  # the processes' generators differ
    assert torch.equal(a["restored"], a["own"]) and torch.equal(b["restored"], b["own"])


def _resume_worker(rank, world_size, port, tmp_path):
    _join(rank, world_size, port)
    os.environ["LOCAL_WORLD_SIZE"] = str(world_size)  # torchrun's too
    for name, stops in (("whole", [None]), ("parts", [2, None])):  # step 2 of 4: mid-epoch
        for until in stops:
            torch.manual_seed(0)
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                Trainer(make_cfg(tmp_path / name, {"name": "dense"}), model=PlainNet()).fit(
                    resume=until is None and name == "parts", until_step=until)
            if until is not None:
                (tmp_path / f"stopped{rank}.txt").write_text(printed.getvalue())
    distributed.shutdown()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_ddp_metrics_of_a_run_resumed_mid_epoch_equal_the_uninterrupted_runs(tmp_path):
    mp.spawn(_resume_worker, args=(2, _free_port(), tmp_path), nprocs=2, join=True)

    def metrics(name):
        rows = (tmp_path / name / "metrics.csv").read_text().splitlines()
        header = rows[0].split(",")
        keep = [i for i, k in enumerate(header) if k in ("epoch", "train_loss", "train_acc", "test_acc")]
        return [[float(row.split(",")[i]) for i in keep] for row in rows[1:]]

    whole, parts = metrics("whole"), metrics("parts")
    assert len(whole) == len(parts) == 2
    for a, b in zip(whole, parts):
        assert a == pytest.approx(b, rel=1e-6)  # not rank 0's partial sums counted twice
    # rank 0 says how to continue: with torchrun and as many processes
    assert (f"with: torchrun --nproc-per-node 2 -m lrtrain train {tmp_path / 'parts'} --resume"
            in (tmp_path / "stopped0.txt").read_text())
    assert (tmp_path / "stopped1.txt").read_text() == ""


def _bn_worker(rank, world_size, port, tmp_path):
    _join(rank, world_size, port)
    torch.manual_seed(0)
    trainer = Trainer(make_cfg(tmp_path / "bn", {"name": "dense"}), model=NormNet())
    trainer.fit()
    if rank == 0:
        torch.save({"history": trainer.history, "weights": trainer.model.state_dict()}, tmp_path / "bn0.pt")
    distributed.shutdown()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_ddp_test_scores_are_those_of_the_model_its_checkpoints_hold(tmp_path, capsys):
    mp.spawn(_bn_worker, args=(2, _free_port(), tmp_path), nprocs=2, join=True)
    saved = torch.load(tmp_path / "bn0.pt", weights_only=True)
    net = NormNet()
    net.load_state_dict(saved["weights"])  # rank 0's model, BatchNorm statistics included
    scored = Trainer(make_cfg(tmp_path / "one", {"name": "dense"}), model=net).evaluate()
    # every rank scored its test shard with rank 0's statistics, not its own last batch's
    assert saved["history"][-1]["test_loss"] == pytest.approx(scored["test_loss"], rel=1e-5)
    longer = make_cfg(tmp_path / "bn", {"name": "dense"})
    longer["train"]["epochs"] = 3
    capsys.readouterr()
    Trainer(longer, model=NormNet()).fit(resume=True)  # one process goes on with the two processes' run
    assert "was written by 2 process(es), this run has 1: each process's share of the batch" in capsys.readouterr().out


def _recalibrate_worker(rank, world_size, port, tmp_path):
    import copy

    from lrtrain.train.bn import recalibrate_bn

    _join(rank, world_size, port)
    torch.manual_seed(0)
    cfg = make_cfg(tmp_path / "recal", {"name": "dense"})
    cfg["train"]["bn_recalibrate"] = 2
    trainer = Trainer(cfg, model=NormNet())
    own = copy.deepcopy(trainer.model)  # what this process's share of the batches alone gives
    recalibrate_bn(own, trainer.data.train.batches(trainer.epochs), 2)
    shared = copy.deepcopy(trainer.model)
    assert trainer._recalibrate(shared) == 2
    stats = lambda m: {k: v for k, v in m.state_dict().items() if "running" in k}  # noqa: E731
    torch.save({"own": stats(own), "shared": stats(shared)}, tmp_path / f"recal{rank}.pt")
    distributed.shutdown()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_ddp_recalibrated_batchnorm_statistics_are_every_processs_averaged(tmp_path):
    mp.spawn(_recalibrate_worker, args=(2, _free_port(), tmp_path), nprocs=2, join=True)
    a, b = (torch.load(tmp_path / f"recal{r}.pt", weights_only=True) for r in range(2))
    assert a["shared"].keys() == a["own"].keys() and a["shared"]
    for key in a["shared"]:
        assert torch.equal(a["shared"][key], b["shared"][key]), key  # every rank scores the same model
        assert not torch.equal(a["own"][key], b["own"][key]), key   # each share gave its own
        torch.testing.assert_close(a["shared"][key], (a["own"][key] + b["own"][key]) / 2)


def _bad_test_image_worker(rank, world_size, port, tmp_path):
    _join(rank, world_size, port)
    torch.manual_seed(0)
    cfg = resolve({"out_dir": str(tmp_path / "run"), "model": {"name": "resnet20"},
                   "data": {"name": "folder", "dir": str(tmp_path / "images"), "workers": 0, "batch_size": 2,
                            "eval_batch_size": 2, "image_size": 8},
                   "schedule": {"name": "constant"}, "train": {"epochs": 2, "progress": False}})
    try:
        Trainer(cfg).fit()
        outcome = "finished"
    except Exception as err:
        outcome = f"{type(err).__name__}: {err}"
    torch.save(outcome, tmp_path / f"outcome{rank}.pt")
    distributed.shutdown(wait=False)


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_an_unreadable_test_image_under_ddp_keeps_the_trained_epoch(tmp_path, capsys):
    from test_data import _two_class_folder

    from lrtrain.train.checkpoint import list_checkpoints, load_checkpoint

    _two_class_folder(tmp_path / "images")
    bad = tmp_path / "images" / "val" / "bee" / "2.png"
    whole = bad.read_bytes()
    bad.write_bytes(whole[: len(whole) // 2])  # cut short: the evaluation fails on one rank's share only
    mp.spawn(_bad_test_image_worker, args=(2, _free_port(), tmp_path), nprocs=2, join=True)
    outcomes = [torch.load(tmp_path / f"outcome{r}.pt", weights_only=True) for r in range(2)]
    assert any("cannot read image" in o and "2.png" in o for o in outcomes), outcomes
    assert any("another process could not score its share" in o for o in outcomes), outcomes
    kept = list_checkpoints(tmp_path / "run" / "checkpoints")
    state = load_checkpoint(kept[-1])
    assert len(kept) == 1 and (state["epoch"], state["batch"]) == (0, 3)  # after the first epoch's last step
    bad.write_bytes(whole)
    capsys.readouterr()
    cfg = resolve({"out_dir": str(tmp_path / "run"), "model": {"name": "resnet20"},
                   "data": {"name": "folder", "dir": str(tmp_path / "images"), "workers": 0, "batch_size": 2,
                            "eval_batch_size": 2, "image_size": 8},
                   "schedule": {"name": "constant"}, "train": {"epochs": 2, "progress": False}})
    assert Trainer(cfg).fit(resume=True)["finished"]  # one process redoes the epoch's end and goes on
