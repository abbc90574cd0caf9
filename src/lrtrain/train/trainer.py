"""The training loop behind ``lrtrain train``: any method, on one device or many, resumable bit for bit.

One step is the hook protocol of `lrtrain.methods.base.Method`: forward (bf16 autocast), backward,
``method.before_step()``, ``optimizer.step()``, ``method.after_step()``. The step never waits for the
device: loss, accuracy and a count of non-finite losses are summed on the device and read once per
epoch (the progress bar shows the last snapshot the device has already copied back). Checkpoints hold
everything a resumed run needs to continue exactly where it stopped: weights, optimizer, method state,
RNG states, the step and the position inside the epoch.

The run directory (``out_dir``) receives config.yaml, metrics.csv (one row per epoch), ranks.csv (the
method's ranks, a row where one changes: `rank_log`), checkpoints/, and at the end compact.pt,
compact_module.pt and summary.json.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import json
import os
import random
import signal
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from .. import config as config_mod
from ..layers import LowRankConv2d, LowRankLinear
from ..linalg import NonFiniteError
from ..data import Data, build_data, model_facts, normalization_stats
from ..devices import device_name, resolve_device
from ..evaluation import score_sums, shown_batches, summarize
from ..files import atomic_write, atomic_write_text, read_summary
from ..methods import create_method
from ..pretrained import load_pretrained
from ..provenance import commit, today
from . import distributed
from .bn import recalibrate_bn, running_statistics
from .checkpoint import list_checkpoints, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .rank_log import RankLog
from .optim import build_sgd, load_optimizer_state
from .schedule import from_config as schedule_from_config
from .stops import DivergenceError, OutOfMemory, StopSignals, is_out_of_memory
from .sums import DeviceSums

METRICS_FIELDS = ["epoch", "step", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "epoch_time_s",
                  "img_per_s"]
RUN_FILES = ["config.yaml", "metrics.csv", "ranks.csv", "summary.json", "compact.pt", "compact_module.pt"]
RESULT_FILES = ["metrics.csv", "summary.json", "compact.pt"]  # what a new run in the folder would replace
FINISHED_FILES = ["summary.json", "compact.pt", "compact_module.pt"]  # written by a run's end


def absolute_paths(config: dict[str, Any]) -> dict[str, Any]:
    """`config` with its data folder and weight files (data.dir, model.weights, a method's file settings
    such as SVDFinetune's init) made absolute where they name something relative to the working
    directory: the run's config.yaml then finds them when the run is resumed or evaluated from elsewhere.
    (A CIFAR folder found without data.dir, through $LRTRAIN_DATA or the default places, is searched for
    again on resume: written in, it would pin a run to where the data were, and a moved one would not find
    them.)"""
    from ..methods import method_class

    places = [("data", "dir"), ("model", "weights"),
              *(("method", key) for key in method_class(config["method"]["name"]).path_params)]
    changed = {}
    for section, key in places:
        value = config[section].get(key)
        if isinstance(value, os.PathLike):  # a Path given in Python: config.yaml and checkpoints hold text
            value = changed[section, key] = os.fspath(value)
        if isinstance(value, str) and not os.path.isabs(value) and os.path.exists(value):
            changed[section, key] = os.path.abspath(value)
    if not changed:
        return config
    config = copy.deepcopy(config)
    for (section, key), value in changed.items():
        config[section][key] = value
    return config


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# The devices where an "auto" speed option is on: channels-last convolutions train 1.15-1.3x faster than NCHW on
# a CPU too (oneDNN; ResNet-20/56 at batch 128, every method: benchmarks/results/train_throughput_cpu.md)
AUTO_ON = {"amp": ("cuda",), "channels_last": ("cuda", "cpu"), "compile": ("cuda",)}


def auto_option(name: str, value: bool | str, device: torch.device) -> bool:
    """Whether the speed option `name` (amp, channels_last, compile) is on for `value` on `device`."""
    return device.type in AUTO_ON[name] if value == "auto" else bool(value)


def compile_mode(value: str, device: torch.device, distributed: bool) -> str | None:
    """torch.compile's mode for the recipe's ``train.compile_mode``. "auto" replays CUDA graphs
    (reduce-overhead) on one CUDA device: a CIFAR ResNet's step is bound by kernel launches there, and every
    method trains to the same weights in both modes (benchmarks/results/compile_modes_nvidia-h200.md). Not
    under DDP, whose gradient all-reduce runs inside the backward pass, nor elsewhere: torch's default."""
    if value == "auto":
        value = "reduce-overhead" if device.type == "cuda" and not distributed else "default"
    return None if value == "default" else value


class Trainer:
    """Trains the recipe's model with the recipe's method; `fit` runs it, `evaluate` measures it.

    ``config`` is a resolved recipe (`lrtrain.config.resolve` / `load_recipe`). ``model`` replaces the
    recipe's ``model.name`` (any nn.Module taking N×C×H×W images); ``data`` replaces the recipe's data.
    Everything is built here, in the order the hook protocol asks: model, method (which may replace
    layers), then the optimizer over ``method.model``.

    >>> from lrtrain.config import resolve
    >>> cfg = resolve({"data": {"name": "sample", "train_size": 64, "test_size": 32, "image_size": 8,
    ...                         "batch_size": 32}, "train": {"epochs": 1, "progress": False},
    ...                "schedule": {"name": "cosine"}})
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    >>> trainer = Trainer(cfg, model=net)
    >>> sorted(trainer.evaluate())
    ['test_acc', 'test_loss']
    """

    def __init__(self, config: dict[str, Any], *, model: nn.Module | None = None, data: Data | None = None):
        if not config_mod.is_resolved(config):  # a hand-written dict: checked, completed with the defaults
            config = config_mod.resolve(config, source="Trainer config")
        self.cfg = config = absolute_paths(config)
        train_cfg = config["train"]
        self.world = distributed.init_from_env(use_cuda=train_cfg["device"] != "cpu" and torch.cuda.is_available())
        self.device = resolve_device(train_cfg["device"], self.world.local_rank)
        self.amp = auto_option("amp", train_cfg["amp"], self.device)
        self.channels_last = auto_option("channels_last", train_cfg["channels_last"], self.device)
        self.compile = auto_option("compile", train_cfg["compile"], self.device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)  # events and pinned copies then use the training device
            torch.backends.cudnn.benchmark = True
            torch.set_float32_matmul_precision("high")
        self.run_dir = Path(config["out_dir"])
        self.ranks_file = RankLog(self.run_dir / "ranks.csv")
        self.epochs = train_cfg["epochs"]

        self.data = data or build_data(config["data"], device=self.device, seed=config["seed"],
                                       rank=self.world.rank, world_size=self.world.world_size,
                                       channels_last=self.channels_last)
        self.steps_per_epoch = len(self.data.train)

        torch.manual_seed(config["seed"])
        random.seed(config["seed"])
        self.model_name = config["model"]["name"] if model is None else type(model).__name__
        self._registry_model = model is None
        # the classes the model is built for (model.num_classes may exceed the data's, e.g. 1000 for a
        # CIFAR fine-tune): compact.pt must rebuild this model, not one sized by the data
        given, found = config["model"]["num_classes"], self.data.num_classes
        if given is not None and given < found:  # a label past the classifier: found now, not at the first step
            raise ValueError(f"model.num_classes is {given}, but the data has {found} classes (labels 0..{found - 1}):"
                             f" give at least {found}, or leave it out for the data's")
        self.num_classes = found if given is None else given
        if model is None:
            from .. import models

            model = models.create(config["model"]["name"], num_classes=self.num_classes)
        weights = config["model"]["weights"]
        # A run with checkpoints resumes from them, which replace these weights: a file moved away since is
        # then not needed (a fresh start over the run, --overwrite, still says it is missing).
        self._weights_absent = (weights if weights and not Path(weights).exists()
                                and list_checkpoints(self.run_dir / "checkpoints") else None)
        if weights and not self._weights_absent:
            load_pretrained(model, weights, owner="model.weights")
        self.dense_counts = self._count(model)
        model.to(self.device)
        params = {k: v for k, v in config["method"].items() if k != "name"}
        self.method = create_method(config["method"]["name"], model, **params)
        self.method.setup(self.steps_per_epoch, self.steps_per_epoch * self.epochs)
        self._wrap_model()
        self.optimizer = self._build_optimizer()
        self.schedule = schedule_from_config(config["schedule"], config["optim"]["lr"], self.steps_per_epoch,
                                             self.epochs)
        self.sums = DeviceSums(self.device)
        self.step = 0          # optimizer steps taken
        self.epoch = 0         # epochs completed
        self.batch = 0         # next batch of the current epoch
        self.history: list[dict[str, Any]] = []
        self._elapsed_before = 0.0  # seconds spent by the sessions this run resumed from
        # the code of each session that trained the run (read now: the tree may change while it trains)
        self._commits = [commit()]
        # (seconds, images) of the current epoch before this process took it over from a mid-epoch
        # checkpoint (or from one kept when the epoch's end failed), and when and at how many images this
        # process started it: an epoch's row counts them all
        self._epoch_before: tuple[float, int] = (0.0, 0)
        self._epoch_clock: tuple[float, int] | None = None
        self._session_start = time.perf_counter()
        self._changed_on_resume: list[str] = []  # settings that differ from the checkpoint's resumed
        self._finished_before = False  # resumed a finished run with its own settings: nothing to do
        self.stops = StopSignals()  # its signum: SIGINT/SIGTERM received during `fit`
        self._evaluating = False
        self._base_modules: dict[str, nn.Module] | None = None  # the registry model's, for `_layers`

    @property
    def stop_signal(self) -> int | None:
        """The number of the SIGINT/SIGTERM received during `fit`, if any (the run then stops with a
        checkpoint after the step under way)."""
        return self.stops.signum

    # -- building -----------------------------------------------------------------------------------

    def _count(self, model: nn.Module):
        from ..metrics import count

        return count(model, self.data.input_size)

    def _memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.preserve_format

    def _wrap_model(self) -> None:
        """Place ``method.model`` and build what the step calls: DDP and torch.compile around it."""
        self.model = self.method.model.to(self.device, memory_format=self._memory_format())
        net: nn.Module = self.model
        if self.world.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            net = DistributedDataParallel(net, device_ids=ids)
        if self.compile:
            net = torch.compile(net, mode=compile_mode(self.cfg["train"]["compile_mode"], self.device,
                                                       self.world.distributed))
        self.forward = net

    def _build_optimizer(self, previous: torch.optim.Optimizer | None = None) -> torch.optim.Optimizer:
        return build_sgd(self.model, self.cfg["optim"], self.device, previous)

    def _after_step(self) -> None:
        """Drain the method's rank log, keep ranks identical, follow layer replacements."""
        projected = bool(self.method.rank_log)
        if projected:
            if self.world.is_main:
                self.ranks_file.append(self.method.rank_log)
            self.method.rank_log.clear()
        replaced = self.method.rebuild_optimizer or self.method.model is not self.model
        if replaced:
            self._wrap_model()
            self.optimizer = self._build_optimizer(previous=self.optimizer)
            self.method.rebuild_optimizer = False
        if self.world.distributed and (projected or replaced):
            distributed.broadcast_module_(self.model)

    # -- the loop -----------------------------------------------------------------------------------

    def train_step(self, images: Tensor, labels: Tensor) -> None:
        """One optimizer step on a batch, with the method's hooks; never waits for the device."""
        lr = self.cfg["optim"]["lr"] * self.schedule(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            logits = self.forward(images)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.cfg["train"]["label_smoothing"])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.method.before_step()
        self.optimizer.step()
        self.method.after_step()
        self.sums.add(loss.detach(), logits.detach(), labels)
        self.step += 1
        self._after_step()

    def _train_epoch(self, epoch: int, until_step: int | None) -> bool:
        """Steps of ``epoch`` from ``self.batch`` on; False when it stopped (checkpointed) at ``until_step``."""
        self.model.train()
        every = self.cfg["train"]["checkpoint_every"]
        bar = tqdm(total=self.steps_per_epoch, initial=self.batch, desc=f"epoch {epoch + 1}/{self.epochs}",
                   leave=False, dynamic_ncols=True,
                   # None: tqdm shows the bar on a terminal only, so logs of batch jobs stay readable.
                   disable=None if self.cfg["train"]["progress"] and self.world.is_main else True)
        start, start_batch = time.perf_counter(), self.batch
        try:
            for images, labels in self.data.train.batches(epoch, self.batch):
                self.train_step(images, labels)
                self.batch += 1
                bar.update()
                if not bar.disable and (self.batch % 25 == 0 or self.batch == self.steps_per_epoch):
                    rate = (self.batch - start_batch) * images.shape[0] * self.world.world_size \
                        / (time.perf_counter() - start)
                    shown = self.sums.peek()
                    stats = f"loss {shown[0]:.3f} acc {shown[1]:.1f}% " if shown else ""
                    bar.set_postfix_str(f"{stats}lr {self.optimizer.param_groups[0]['lr']:.4g} {rate:.0f} img/s")
                last = self.batch == self.steps_per_epoch
                # A signal is seen between steps without a sync; several processes agree on it at
                # checkpoints only (an agreement is a collective), so they all stop at the same step.
                signalled = self.stops.signum is not None and not self.world.distributed
                if ((until_step is not None and self.step >= until_step) or signalled) and not last:
                    self.save_checkpoint()
                    return False
                if every and self.step % every == 0 and not last:
                    self.save_checkpoint()
                    if self.world.distributed and self._agree(self.stops.signum is not None):
                        return False
        finally:
            bar.close()
        return True

    def evaluate(self, model: nn.Module | None = None) -> dict[str, float]:
        """Test loss and top-1 accuracy (%) of ``model`` (default: the model being trained), all ranks."""
        model = self.model if model is None else model
        if self.world.distributed:  # each rank's BatchNorm statistics moved with its own last batch: all
            # score rank 0's, which checkpoints hold (DDP broadcasts them at the next training step anyway)
            distributed.broadcast_tensors_([b.data for b in model.buffers()])
        self._evaluating = True
        if self.world.distributed:
            sums = self._score_on_every_rank(model)
        else:
            sums = score_sums(model, self._test_batches(), self.amp)
        self._evaluating = False  # left set by an error: `_translate_errors` reads it, then clears it
        result = summarize(distributed.all_reduce_sum_(sums))
        return {"test_loss": result["test_loss"], "test_acc": result["test_acc"]}  # metrics.csv's columns

    def _test_batches(self):
        return shown_batches(self.data.test, "test", self.cfg["train"]["progress"] and self.world.is_main)

    def _score_on_every_rank(self, model: nn.Module) -> Tensor:
        """`score_sums` of this rank's test share, where a rank that fails (an unreadable test image) is known
        to every rank: all raise together, the error marked ``every_process``, so that they can all keep the
        trained epoch in a checkpoint (a collective) rather than leave the others waiting in the sums'."""
        error = None
        try:
            sums = score_sums(model, self._test_batches(), self.amp)
        except Exception as err:
            if is_out_of_memory(err):
                raise  # this rank stops; the others' collectives time out, as for any lost process
            error, sums = err, None
        failed = distributed.all_reduce_sum_(torch.tensor([float(error is not None)], device=self.device))
        if failed.item():
            error = error or RuntimeError("another process could not score its share of the test set (its "
                                          "output says why)")
            error.every_process = True
            raise error
        return sums

    def _end_epoch(self, epoch: int, seconds: float, images: int) -> None:
        """Read the epoch's sums (divergence check), evaluate, log; ``images`` were trained in ``seconds``."""
        loss, acc, nonfinite, _ = self.sums.read()
        if nonfinite:
            self._diverged(f"the loss was NaN/Inf in {nonfinite} step(s)", f"epoch {epoch + 1}")
        # the learning rate of the epoch's last step (an optimizer rebuilt by a swap holds the base rate
        # until the next step sets it)
        last_lr = self.cfg["optim"]["lr"] * self.schedule(max(self.step - 1, 0))
        row: dict[str, Any] = {"epoch": epoch + 1, "step": self.step, "lr": last_lr,
                               "train_loss": loss, "train_acc": acc, "test_loss": None, "test_acc": None,
                               "epoch_time_s": seconds, "img_per_s": images / seconds}
        if (epoch + 1) % self.cfg["train"]["eval_every"] == 0 or epoch + 1 == self.epochs:
            row.update(self.evaluate(self._fresh_bn_copy()))
        self.history.append(row)
        self.epoch, self.batch = epoch + 1, 0
        self.sums.reset()
        if self.world.is_main:
            self._write_metrics()
            test = f"  test {row['test_acc']:.2f}%" if row["test_acc"] is not None else ""
            print(f"epoch {epoch + 1}/{self.epochs}  loss {loss:.4f}  acc {acc:.2f}%{test}  lr {row['lr']:.4g}  "
                  f"{row['img_per_s']:.0f} img/s  {seconds:.1f} s", flush=True)

    def _fresh_bn_copy(self) -> nn.Module | None:
        """A copy of the model with re-estimated BatchNorm statistics when the method has just replaced
        weights (LRPET projects at an epoch's end), so the epoch's test accuracy is the model's and not
        that of stale statistics; None (evaluate the model itself) otherwise or with bn_recalibrate 0.
        The training model is not touched, so the run is the same with or without this."""
        if not (self.method.bn_stale and self.cfg["train"]["bn_recalibrate"]):
            return None
        model = copy.deepcopy(self.model)
        self._recalibrate(model)
        return model

    def _recalibrate(self, model: nn.Module) -> int:
        """Re-estimate `model`'s BatchNorm statistics on `train.bn_recalibrate` training batches (under
        DDP each process's share of them; the processes' statistics are then averaged, so every rank
        evaluates the same model, estimated from every image seen)."""
        used = recalibrate_bn(model, self.data.train.batches(self.epochs), self.cfg["train"]["bn_recalibrate"],
                              torch.bfloat16 if self.amp else None)
        if self.world.distributed and used:
            distributed.average_tensors_(running_statistics(model))
        return used

    def _where(self) -> str:
        """The place in training of the current step, for messages (at an epoch's end `epoch` has moved on)."""
        if self.batch:
            return f"epoch {self.epoch + 1}"
        return f"end of epoch {self.epoch}" if self.epoch else "before the first step"

    def _diverged(self, what: str, where: str) -> None:
        kept = list_checkpoints(self.run_dir / "checkpoints")
        last = f"the last good checkpoint is {kept[-1]}" if kept else "no checkpoint was saved before"
        raise DivergenceError(f"training diverged: {what} by step {self.step} ({where}); stopped, {last}. "
                              f"Lower optim.lr or check the data.")

    def _weights_finite(self) -> bool:
        """One sync over all floating-point parameters and buffers (checkpoint time only)."""
        tensors = [t for t in (*self.model.parameters(), *self.model.buffers()) if t.is_floating_point()]
        return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all().item()) if tensors else True

    def fit(self, *, resume: bool = False, overwrite: bool = False, until_step: int | None = None,
            time_limit: float | None = None) -> dict[str, Any]:
        """Train to the end and finalize; returns the summary (also written to summary.json).

        ``resume`` continues from the run directory's newest checkpoint (a fresh start if it has
        none); without it, a run directory that already holds checkpoints is an error unless
        ``overwrite``. ``until_step`` stops after that many steps and ``time_limit`` (seconds) after the
        first epoch that ends past it, both with a checkpoint to resume from: the result is then
        ``{"finished": False, "step": ..., "checkpoint": ...}``.

        SIGINT and SIGTERM (Ctrl-C, a batch system's stop) stop the run the same way after the step under
        way: the result then also holds ``"signal"`` (its name, e.g. ``"SIGTERM"``). A second signal stops
        at once (KeyboardInterrupt). A loss or a weight that becomes NaN/Inf raises `DivergenceError`
        naming the last good checkpoint; running out of device memory raises `OutOfMemory`.
        """
        with self._translate_errors():
            self._prepare_run_dir(resume, overwrite)
            if self._finished_before:
                print(f"{self.run_dir} is finished, with these settings: nothing to train (--overwrite trains "
                      "it again; a changed setting, e.g. --set train.bn_recalibrate=50, finalizes it again)",
                      flush=True)
                return read_summary(self.run_dir)
            with self.stops:
                stopped = self._train(until_step, time_limit)
            return stopped if stopped is not None else self._finish()

    def _train(self, until_step: int | None, time_limit: float | None) -> dict[str, Any] | None:
        """The epochs left; the stopped result when it stops before the end, else None."""
        session = time.perf_counter()
        if until_step is not None and self.step >= until_step and self.epoch < self.epochs:
            if not list_checkpoints(self.run_dir / "checkpoints"):
                self.save_checkpoint()
            return self._stopped()  # without a step more
        for epoch in range(self.epoch, self.epochs):
            self._epoch_clock = (time.perf_counter(), self.sums.samples)
            if not self._train_epoch(epoch, until_step):
                return self._stopped()
            seconds, images = self._epoch_so_far()
            self._epoch_clock, self._epoch_before = None, (seconds, images)  # kept where the end fails
            self._end_epoch_or_keep_it(epoch, seconds, images)
            self._epoch_before = (0.0, 0)
            out_of_time = time_limit is not None and time.perf_counter() - session > time_limit
            stop = (until_step is not None and self.step >= until_step) \
                or self._agree(out_of_time or self.stops.signum is not None)
            self.save_checkpoint()
            if stop and self.epoch < self.epochs:
                return self._stopped()
        return None

    def _epoch_so_far(self) -> tuple[float, int]:
        """Seconds and images of the current epoch's training so far, by every process that trained it
        (a run resumed mid-epoch, even on another device, included: its row would read a part as the whole)."""
        if self._epoch_clock is None:
            return self._epoch_before
        started, images_before = self._epoch_clock
        return (self._epoch_before[0] + time.perf_counter() - started,
                self._epoch_before[1] + (self.sums.samples - images_before) * self.world.world_size)

    def _end_epoch_or_keep_it(self, epoch: int, seconds: float, images: int) -> None:
        """`_end_epoch`; where it fails (an unreadable test image, out of memory in the evaluation) a
        single process first checkpoints the trained epoch, as it stood after its last step, so that
        ``--resume`` runs only its end again. Not on divergence (nothing good to keep), nor under DDP where
        one rank failed alone (it would leave the others in the checkpoint's collectives); a failure to
        score the test set is every rank's (`_score_on_every_rank`), and they keep the epoch together."""
        rng = rng_state()
        try:
            self._end_epoch(epoch, seconds, images)
        except DivergenceError:
            raise
        except Exception as err:
            if (self.world.distributed and not getattr(err, "every_process", False)) \
                    or self.batch != self.steps_per_epoch:
                raise
            set_rng_state(rng)  # as after the epoch's last step: what the resumed run starts from
            path = self.save_checkpoint()
            if self.world.is_main:
                print(f"the trained epoch {epoch + 1} is kept in {path}: --resume redoes only its end", flush=True)
            raise

    @contextlib.contextmanager
    def _translate_errors(self) -> Iterator[None]:
        """NaN weights met by a method's SVD become a `DivergenceError`, and running out of device
        memory an `OutOfMemory` naming the batch size to lower."""
        try:
            yield
        except NonFiniteError as err:
            self._diverged(str(err), self._where())
        except RuntimeError as err:
            evaluating, self._evaluating = self._evaluating, False
            if isinstance(err, (DivergenceError, OutOfMemory)) or not is_out_of_memory(err):
                raise
            key = "data.eval_batch_size" if evaluating else "data.batch_size"
            size = self.cfg["data"]["eval_batch_size" if evaluating else "batch_size"]
            kept = list_checkpoints(self.run_dir / "checkpoints")
            last = f"; the last checkpoint is {kept[-1]}" if kept else ""
            raise OutOfMemory(f"out of memory on {device_name(self.device)} at step {self.step} "
                              f"({'evaluation' if evaluating else 'training'}) with {key}={size}: "
                              f"lower it, e.g. --set {key}={max(1, size // 2)}{last}") from err

    def _agree(self, flag: bool) -> bool:
        """True on every rank when any rank says so (a wall-clock limit must stop all ranks together)."""
        if not self.world.distributed:
            return flag
        return bool(distributed.all_reduce_sum_(torch.tensor([float(flag)], device=self.device)).item())

    def _stopped(self) -> dict[str, Any]:
        checkpoint = list_checkpoints(self.run_dir / "checkpoints")[-1]
        name = signal.Signals(self.stops.signum).name if self.stops.signum is not None else None
        if self.world.is_main:
            why = f"{name} received: " if name else ""
            command = f"lrtrain train {self.run_dir} --resume"
            if self.world.distributed:  # a resume with as many processes equals the uninterrupted run
                one_node = int(os.environ.get("LOCAL_WORLD_SIZE", 0)) in (0, self.world.world_size)
                command = (f"torchrun --nproc-per-node {self.world.world_size} -m {command}" if one_node else
                           f"your torchrun command on every node, running {command}")
            print(f"{why}stopped at step {self.step}, checkpoint {checkpoint}; continue (epoch {self.epoch + 1}, "
                  f"{self.batch} of its {self.steps_per_epoch} batches done) with: {command}", flush=True)
        result: dict[str, Any] = {"finished": False, "step": self.step, "checkpoint": str(checkpoint)}
        if name:
            result["signal"] = name
        return result

    def _elapsed(self) -> float:
        """Seconds of this run so far, over all the sessions it was resumed in."""
        return self._elapsed_before + time.perf_counter() - self._session_start

    # -- files --------------------------------------------------------------------------------------

    def _prepare_run_dir(self, resume: bool, overwrite: bool) -> None:
        ckpt_dir = self.run_dir / "checkpoints"
        held_something = self.run_dir.is_dir() and any(self.run_dir.iterdir())  # a run was started here
        existing = list_checkpoints(ckpt_dir)
        # A run's results, also where its checkpoints are gone (a finished run kept lean, as reproduce.py's)
        results = [f for f in RESULT_FILES if (self.run_dir / f).is_file()]
        if (existing or results) and not (resume or overwrite):
            held = ", ".join([f"{len(existing)} checkpoint(s)"] * bool(existing) + results)
            options = "pass --resume to continue it or --overwrite to start again" if existing else \
                "no checkpoint to continue it from: pass --overwrite to start again"
            raise ValueError(f"{self.run_dir} already holds a run ({held}); {options}")
        if resume and not existing and results and not overwrite:
            what = "a finished run (summary.json)" if "summary.json" in results else f"a run's {', '.join(results)}"
            raise ValueError(f"{self.run_dir} holds {what} and no checkpoint to resume from: nothing to continue; "
                             "--overwrite trains it again (its results are replaced)")
        if self._weights_absent and not (resume and existing):
            load_pretrained(self.model, self._weights_absent, owner="model.weights")  # raises: no such file
        if self.world.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if overwrite and not resume:
                for path in [*existing, *(self.run_dir / f for f in RUN_FILES)]:
                    path.unlink(missing_ok=True)
            for stale in [*ckpt_dir.glob(".step_*.tmp"), *self.run_dir.glob(".*.tmp")]:
                stale.unlink(missing_ok=True)  # half-written files of a process that was killed
        if self.world.distributed:
            torch.distributed.barrier()
        if resume and existing:
            try:
                state = load_checkpoint(existing[-1])
            except ValueError as err:
                hint = (f"; move it away to resume from the one before, {existing[-2]}" if len(existing) > 1
                        else "; it is the run's only checkpoint: start again with --overwrite")
                raise ValueError(f"{_one_line(str(err))}{hint}") from None
            self.load_checkpoint(existing[-1], state)
            self._finished_before = (self.epoch == self.epochs and not self._changed_on_resume
                                     and (self.run_dir / "summary.json").is_file())
            if self.epoch > self.epochs:
                raise ValueError(f"checkpoint {existing[-1]} has trained {self.epoch} epochs, more than this run's "
                                 f"train.epochs={self.epochs}: resume with train.epochs >= {self.epoch}")
            stale = [f for f in FINISHED_FILES if (self.run_dir / f).is_file()] if self.epoch < self.epochs else []
            if stale and self.world.is_main:  # a finished run extended: they describe its earlier end
                for name in stale:
                    (self.run_dir / name).unlink()
                print(f"note: {self.run_dir} is trained on to {self.epochs} epochs: its {', '.join(stale)} of the "
                      f"run as it ended before are removed (written again at the new end)", flush=True)
        elif self.world.is_main:
            if resume and held_something:  # not in a new folder
                replaced = f" (its {', '.join(results)} replaced)" if results else ""
                print(f"no checkpoint in {ckpt_dir}: starting from scratch{replaced}", flush=True)
            # rows a killed first session logged before any checkpoint: the method logs its own again
            self.ranks_file.restart()
        if self.world.is_main:
            config_mod.dump(self.cfg, self.run_dir / "config.yaml")

    def save_checkpoint(self) -> Path | None:
        """Checkpoint the current state (rank 0 writes); refuses, with DivergenceError, after a NaN/Inf loss."""
        nonfinite = self.sums.nonfinite()
        if nonfinite:
            self._diverged(f"the loss was NaN/Inf in {nonfinite} step(s)", self._where())
        if not self._weights_finite():
            self._diverged("the weights became NaN/Inf", self._where())
        sums = self.sums.state()  # a collective: on every rank
        rng = rng_state()
        rng_ranks = None
        if self.world.distributed:  # each process's generators (its own GPU's above all), for its resume
            rng_ranks = [None] * self.world.world_size
            torch.distributed.all_gather_object(rng_ranks, rng)
        path = None
        if self.world.is_main:
            state = {
                "format": 1,
                "config": self.cfg,
                "step": self.step,
                "epoch": self.epoch,
                "batch": self.batch,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "method": self.method.state_dict(),
                "sums": sums,
                "history": self.history,
                "elapsed": self._elapsed(),
                "commits": self._commits,
                "rng": rng,
                "rng_ranks": rng_ranks,
                "epoch_so_far": list(self._epoch_so_far()) if self.batch else None,
                "num_classes": self.num_classes,  # the classifier's outputs, also when it is factorized
                "train_images": self.data.train.num_images,  # a resume on other data says so
                **model_facts(self.data),  # for lrtrain evaluate / compress
                **self._layers(),
            }
            path = save_checkpoint(self.run_dir / "checkpoints", self.step, state,
                                   self.cfg["train"]["keep_checkpoints"])
        if self.world.distributed:
            torch.distributed.barrier()  # every rank sees the file before going on
        return path

    def load_checkpoint(self, path: str | Path, state: dict[str, Any] | None = None) -> None:
        """Restore a checkpoint written by `save_checkpoint` into this trainer (``state``: its content,
        when already read).

        The method's state is loaded first, so a method that changed layer shapes can rebuild them
        before the weights are loaded. A checkpoint of another model or method raises ValueError naming both.
        """
        state = load_checkpoint(path) if state is None else state
        if not isinstance(state, dict) or not {"config", "model", "method", "optimizer"} <= state.keys():
            raise ValueError(f"{path} is not a training checkpoint of lrtrain")
        saved, now = config_mod.flatten(state["config"]), config_mod.flatten(self.cfg)
        was = (saved.get("model.name"), saved.get("method.name"))
        this = (now["model.name"] if self._registry_model else was[0], now["method.name"])
        if was != this:
            raise ValueError(f"checkpoint {path} holds a {was[0]} trained with method {was[1]!r}, but this run "
                             f"builds a {this[0]} with method {this[1]!r}: resume with the recipe it was saved "
                             "with, or start again with --overwrite")
        changed = [k for k in config_mod.differences(saved, now)
                   if not (k == "out_dir" and Path(saved[k]).resolve() == Path(now[k]).resolve())]
        self._changed_on_resume = changed
        if changed and self.world.is_main:
            print(f"note: resuming {path} with changed settings: {', '.join(changed)}", flush=True)
        if "train.epochs" in changed and now["schedule.name"] == "cosine" and self.world.is_main:
            warnings.warn(f"train.epochs changed from {saved.get('train.epochs')} to {now['train.epochs']}: the "
                          "cosine schedule is spread over the new length from here on (its learning rate jumps), "
                          "so the run equals neither length's own run")
        before = [id(p) for p in self.model.parameters()]
        try:
            self.method.load_state_dict(state["method"])
            if self.method.model is not self.model or [id(p) for p in self.method.model.parameters()] != before:
                self._wrap_model()  # the method rebuilt layers; an unchanged model keeps its compiled graph
            self.model.load_state_dict(state["model"])
            self.optimizer = self._build_optimizer()
            load_optimizer_state(self.optimizer, state["optimizer"])
        except (RuntimeError, KeyError, ValueError) as err:
            detail = _one_line(f"{type(err).__name__}: {err}" if isinstance(err, KeyError) else str(err))
            raise ValueError(f"checkpoint {path} does not fit this run's {self.model_name} with method "
                             f"{self.method.name!r}: {detail}") from None
        self.step, self.epoch, self.batch = state["step"], state["epoch"], state["batch"]
        self.sums.load(state["sums"], self.world.is_main)
        self.history = state["history"]
        self._elapsed_before = state["elapsed"]
        # absent from older checkpoints; "trained_epoch": an epoch whose end failed, in checkpoints before 2026-11-28
        so_far = state.get("trained_epoch") or state.get("epoch_so_far")
        self._epoch_before = (float(so_far[0]), int(so_far[1])) if so_far else (0.0, 0)
        self._keep_normalization(state.get("normalize"), path)
        earlier = [c for c in state.get("commits", []) if c != self._commits[-1]]  # absent from older checkpoints
        self._commits = [*dict.fromkeys(earlier), self._commits[-1]]
        per_rank = state.get("rng_ranks")  # absent from older checkpoints
        same_world = per_rank is not None and len(per_rank) == self.world.world_size
        written_by = len(per_rank) if per_rank else 1  # a single process writes None
        if "rng_ranks" in state and written_by != self.world.world_size and self.world.is_main:
            print(f"note: {path} was written by {written_by} process(es), this run has {self.world.world_size}: "
                  "each process's share of the batch and its BatchNorm statistics change from here on, so the "
                  "run equals neither setting's own run", flush=True)
        before = state.get("train_images")  # absent from older checkpoints
        if before is not None and before != self.data.train.num_images and self.world.is_main:
            print(f"note: {path} was trained on {before} training images, the data now hold "
                  f"{self.data.train.num_images}: from here on each epoch's order and images differ from the "
                  "interrupted run's", flush=True)
        set_rng_state(per_rank[self.world.rank] if same_world else state["rng"])
        self.method.rank_log.clear()  # rows up to this step (a constructor's too) are in ranks.csv already
        if self.world.is_main:
            self.ranks_file.resume(self.step)
            print(f"resumed from {path} (step {self.step}, epoch {self.epoch + 1}, {self.batch} of its "
                  f"{self.steps_per_epoch} batches done)", flush=True)

    def _keep_normalization(self, saved: dict[str, list[float]] | None, path: str | Path) -> None:
        """Go on normalizing the images as the checkpoint's model was trained to take them, where changed
        data settings (e.g. CIFAR's data.train_size) give other statistics."""
        if not saved or not self.data.normalize or saved == self.data.normalize:
            return
        mean, std = normalization_stats(saved)
        for loader in (self.data.train, self.data.test):
            if hasattr(loader, "mean"):
                loader.mean, loader.std = mean.to(loader.mean.device), std.to(loader.std.device)
        self.data.normalize = saved
        if self.world.is_main:
            print(f"note: the images are normalized as {path}'s model was trained to take them, not by this "
                  "run's data settings' statistics", flush=True)

    def _write_metrics(self) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, METRICS_FIELDS)
        writer.writeheader()
        writer.writerows(self.history)
        atomic_write_text(self.run_dir / "metrics.csv", buffer.getvalue())

    def _finish(self) -> dict[str, Any]:
        """Finalize the method, evaluate and count the compact model, save it, write summary.json."""
        last = self.history[-1]
        if last["test_acc"] is None:  # a run shortened on --resume to an epoch `eval_every` skipped
            last.update(self.evaluate(self._fresh_bn_copy()))
            if self.world.is_main:
                self._write_metrics()
        pre_finalize = last["test_acc"]
        compact = self.method.finalize().to(self.device, memory_format=self._memory_format())
        if self.method.rank_log:  # a last projection or cut made by finalize (LRPET, TRP's in flight)
            if self.world.is_main:
                self.ranks_file.append(self.method.rank_log)
            self.method.rank_log.clear()
        recalibrated = self._recalibrate(compact)
        final = self.evaluate(compact)
        counts = self._count(compact)
        evaluated = [r for r in self.history if r["test_acc"] is not None]
        best = max(evaluated, key=lambda r: r["test_acc"])
        dense, small = self.dense_counts, counts
        summary = {
            "finished": True,
            "name": self.cfg["name"],
            "run_dir": str(self.run_dir),
            "model": self.model_name,
            "method": self.method.name,
            "data": self.data.description,
            "epochs": self.epochs,
            "steps": self.step,
            "best_acc": best["test_acc"],
            "best_epoch": best["epoch"],
            "pre_finalize_acc": pre_finalize,
            "bn_recalibrated_batches": recalibrated,
            "final_acc": final["test_acc"],
            "final_loss": final["test_loss"],
            "dense": {"flops": dense.flops, "params": dense.params},
            "compact": {"flops": small.flops, "params": small.params},
            "speedup": dense.flops / small.flops if small.flops else None,
            "flops_reduction": 1 - small.flops / dense.flops if dense.flops else None,
            "ranks": self.method.ranks(),  # the method's last training ranks (TRP: its last projection)
            "compact_ranks": _factor_ranks(compact),  # the compact model's (TRP: after `final`'s truncation)
            "wall_time_s": self._elapsed(),
            "device": device_name(self.device),
            "world_size": self.world.world_size,
            "torch": str(torch.__version__),
            "num_classes": self.num_classes,
            **model_facts(self.data),
            "commit": ", ".join(self._commits),
            "date": today(),
        }
        if self.world.is_main:
            self._save_compact(compact)
            atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
            print(f"finished: test accuracy {final['test_acc']:.2f}% (before finalize {pre_finalize:.2f}%, "
                  f"best {best['test_acc']:.2f}%), {small.flops / 1e6:.2f} M FLOPs "
                  f"({summary['speedup'] or 0:.2f}x fewer), {small.params / 1e6:.3f} M params", flush=True)
        return summary

    def _layers(self) -> dict[str, Any]:
        """``{"layers": ...}``: how the trained model's layers differ from the registry model's (a method's
        factorized layers; `export.describe`), so that a checkpoint of any run rebuilds its model without
        the method (lrtrain evaluate, info, compress); None for a model given as a module."""
        from .. import export

        if not self._registry_model:
            return {"layers": None}  # no registry model to rebuild it from
        if self._base_modules is None:  # built once: a ResNet-50 takes a while to initialize
            self._base_modules = export.base_modules(self.model_name, self.num_classes)
        return {"layers": export.describe(self.model, self.model_name, self.num_classes,
                                          base=self._base_modules)["layers"]}

    def _save_compact(self, compact: nn.Module) -> None:
        from .. import export, models

        from ..inspection import trained_on

        extra = {"input_size": list(self.data.input_size), "method": self.method.name, "ranks": self.method.ranks(),
                 **model_facts(self.data), "trained_on": trained_on(self.cfg)}
        path = self.run_dir / "compact.pt"
        if self.model_name in models.list_models():
            export.save(compact, path, self.model_name, self.num_classes, **extra)
        else:
            # A model given as a module (not by registry name) cannot be rebuilt by export.load: its file
            # keeps the weights and a summary of the architecture only.
            arch = {"model": self.model_name, "num_classes": self.num_classes, **extra,
                    "modules": {name: type(m).__name__ for name, m in compact.named_modules() if name}}
            state = {k: v.detach().cpu().contiguous() for k, v in compact.state_dict().items()}
            atomic_write(path, lambda f: torch.save({"state_dict": state, "arch": arch}, f))
        module = copy.deepcopy(compact).cpu().to(memory_format=torch.contiguous_format)
        atomic_write(self.run_dir / "compact_module.pt", lambda f: torch.save(module, f))


def _factor_ranks(model: nn.Module) -> dict[str, Any]:
    """``{name: rank}`` of every factorized layer of `model` (tucker2 ranks as ``[r_in, r_out]``)."""
    return {name: list(m.rank) if isinstance(m.rank, tuple) else int(m.rank)
            for name, m in model.named_modules() if isinstance(m, (LowRankConv2d, LowRankLinear))}


def train(config: dict[str, Any], *, model: nn.Module | None = None, **fit_options: Any) -> dict[str, Any]:
    """Build a `Trainer` for ``config`` and `Trainer.fit` it; returns the summary."""
    return Trainer(config, model=model).fit(**fit_options)
