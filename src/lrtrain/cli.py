"""The ``lrtrain`` command line: one subcommand per entry of `COMMANDS`.

A subcommand is a `Command`: a help line, a function adding its arguments to its parser, and a function
running it (returning the exit status). User mistakes (bad recipe, missing data, invalid value) end
with one line ``lrtrain: error: ...`` and status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .config import ConfigError, load_recipe, resolve

# The demo's method: LRPET keeping half of each layer's rank, so the demo ends with a compact model.
DEMO_METHOD: dict[str, Any] = {"name": "lrpet", "goal": 0.5}


@dataclass(frozen=True)
class Command:
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _fit(cfg: dict[str, Any], *, resume: bool, overwrite: bool, time_limit: float | None) -> int:
    from .train import Trainer, distributed
    from .train.trainer import RUN_FILES

    try:
        trainer = Trainer(cfg)
        summary = trainer.fit(resume=resume, overwrite=overwrite, time_limit=time_limit)
    except BaseException:
        distributed.shutdown(wait=False)
        raise
    distributed.shutdown()
    if summary["finished"] and trainer.world.is_main:
        written = [f for f in RUN_FILES if (Path(summary["run_dir"]) / f).is_file()]
        print(f"results in {summary['run_dir']}/: {', '.join(written)} "
              f"(final accuracy {summary['final_acc']:.2f}%)")
    if summary.get("signal"):  # stopped cleanly by SIGINT/SIGTERM: the shell's 128 + signal number
        return 128 + int(getattr(signal, summary["signal"]))
    return 0


def _train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="recipe YAML file, or a run directory (its config.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key, e.g. --set optim.lr=0.05 (repeatable)")
    p.add_argument("--data-dir", help="where the data set is (default: $LRTRAIN_DATA, then ../shared/data from "
                                      "here and from the project)")
    p.add_argument("--device", help="cpu, cuda, cuda:N or auto (default: the recipe's train.device)")
    p.add_argument("-o", "--out-dir", help="run directory (default: the recipe's out_dir, runs/<name>)")
    p.add_argument("--resume", action="store_true", help="continue from the run directory's newest checkpoint")
    p.add_argument("--overwrite", action="store_true", help="start again in a run directory that holds a run")
    p.add_argument("--time-limit", type=float, metavar="SECONDS",
                   help="stop with a checkpoint after the first epoch that ends past this many seconds")


def _run_train(args: argparse.Namespace) -> int:
    if args.resume and args.overwrite:
        raise ValueError("--resume continues the run in its folder, --overwrite starts it again: give one")
    if args.time_limit is not None and not args.time_limit >= 0:  # 0: stop after the first epoch
        raise ValueError(f"--time-limit is {args.time_limit:g} s: give a number of seconds, 0 or more")
    with warnings.catch_warnings():
        if os.environ.get("RANK", "0") != "0":  # under torchrun the recipe's warnings once, from rank 0
            warnings.simplefilter("ignore")
        cfg = load_recipe(args.recipe, args.overrides)
    if args.data_dir:
        cfg["data"]["dir"] = args.data_dir
    if args.device:
        cfg["train"]["device"] = args.device
    if args.out_dir:
        cfg["out_dir"] = args.out_dir
    elif Path(args.recipe).is_dir():  # the run directory itself, wherever it was moved since
        cfg["out_dir"] = str(args.recipe)
    return _fit(cfg, resume=args.resume, overwrite=args.overwrite, time_limit=args.time_limit)


def demo_recipe(data_dir: str | None = None, epochs: int = 2) -> dict[str, Any]:
    """The demo: ResNet-20 on a CIFAR-10 subset when CIFAR-10 is found, else on the generated set.

    A place given for the data (`data_dir`, or $LRTRAIN_DATA) that holds no CIFAR-10 is an error: a typo
    must not quietly turn the demo into one on generated images.
    """
    import os

    from .data import DATA_ENV, find_cifar

    try:
        find_cifar("cifar10", data_dir)
        data = {"name": "cifar10", "dir": data_dir, "train_size": 4000, "test_size": 1000}
    except FileNotFoundError:
        if data_dir or os.environ.get(DATA_ENV):
            raise
        data = {"name": "sample", "train_size": 4000, "test_size": 1000}
    return resolve({
        "name": "demo",
        "model": {"name": "resnet20"},
        "data": {**data, "batch_size": 64},
        "optim": {"lr": 0.05, "weight_decay": 5e-4},
        "schedule": {"name": "cosine"},
        "train": {"epochs": epochs, "bn_recalibrate": 20},
        "method": DEMO_METHOD,
    }, source="demo")


def _demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="where CIFAR-10 is (default: $LRTRAIN_DATA, then ../shared/data from here "
                                      "and from the project)")
    p.add_argument("-o", "--out-dir", default="runs/demo", help="run directory (replaced at each demo)")
    p.add_argument("--epochs", type=int, default=2, help="training epochs")


def _run_demo(args: argparse.Namespace) -> int:
    cfg = demo_recipe(args.data_dir, args.epochs)
    cfg["out_dir"] = args.out_dir
    held = Path(args.out_dir) / "config.yaml"
    if held.is_file() and (load_recipe(str(held.parent), []).get("name") != "demo"):  # another run's folder
        raise ValueError(f"{args.out_dir} holds a run that is not a demo: the demo replaces its folder, so give "
                         "it another --out-dir")
    epochs = f"{args.epochs} epoch{'s' if args.epochs != 1 else ''}"
    if cfg["data"]["name"] == "sample":  # said, not only named: its accuracy says nothing of CIFAR-10's
        from .data import find_cifar

        try:
            find_cifar("cifar10")
        except FileNotFoundError as err:
            print(f"note: {err}; the demo trains on a generated sample set instead (its accuracy says "
                  "nothing of CIFAR-10's)")
    print(f"demo: {cfg['model']['name']} with method {cfg['method']['name']!r} on {cfg['data']['name']}, "
          f"{epochs} (under a minute an epoch on a 2-core CPU)")
    return _fit(cfg, resume=False, overwrite=True, time_limit=None)


def _policy_arguments(p: argparse.ArgumentParser, default_rank: str | None, default_text: str = "%(default)s") -> None:
    p.add_argument("--rank", default=default_rank,
                   help="rank policy: energy:E, threshold:V, ratio:R, fixed:K or flops:F, each with an optional "
                        f",multiple:M (ranks in multiples of M, e.g. 8 for GPU tensor cores) (default {default_text})")
    p.add_argument("--scheme", help="channel, spatial, decoupled or tucker2 (default channel)")
    p.add_argument("--skip", nargs="*", default=[], metavar="PATTERN", help="layer names to keep dense (fnmatch)")


def _info_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a model name (lrtrain.models.list_models()), or a trained one: a run directory "
                                 "(its compact.pt, else its newest checkpoint), a compact model file or a checkpoint")
    p.add_argument("--num-classes", type=int,
                   help="the classifier's classes, for a model name (default 10; a trained model's file says its "
                        "own)")
    p.add_argument("--input-size", type=int, nargs=4, metavar=("N", "C", "H", "W"),
                   help="input shape (default: the model's own, 1 3 32 32 for CIFAR models)")
    _policy_arguments(p, None, "ratio:0.5 for a model name; for a trained model, its layers as they are, or with "
                               "--rank what that policy would make of its weights")


def _run_info(args: argparse.Namespace) -> int:
    from .inspection import info, trained_info

    looks_like_path = "/" in args.model or args.model.endswith((".pt", ".pth"))
    if looks_like_path and not Path(args.model).exists():  # not a model name mistyped: a path that is not there
        raise FileNotFoundError(f"no such run directory, compact model or checkpoint: {args.model}")
    scheme = args.scheme or "channel"
    if not Path(args.model).exists():
        print(info(args.model, args.rank or "ratio:0.5", scheme, args.skip, args.input_size, args.num_classes or 10))
        return 0
    if args.num_classes is not None:
        raise ValueError("--num-classes is for a model name: a trained model's file says its own classes")
    unused = [flag for flag, given in (("--scheme", args.scheme is not None), ("--skip", bool(args.skip))) if given]
    if args.rank is None and unused:
        raise ValueError(f"{' and '.join(unused)} plan a decomposition with --rank: add --rank (without it, info "
                         "shows the trained model's layers as they are)")
    if args.rank is None:
        print(trained_info(args.model, args.input_size))
    else:
        print(info(args.model, args.rank, scheme, args.skip, args.input_size))
    return 0


def _compress_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a run directory, a checkpoint step_*.pt or a compact model file")
    p.add_argument("-o", "--out", required=True, help="where to write the compact model (.pt)")
    _policy_arguments(p, "energy:0.95")


def _not_a_run_file(out: str, source: str) -> None:
    """Refuse an output path that is the input itself or one of a run directory's own files (its compact.pt,
    a checkpoint): writing there would replace the trained model while summary.json still describes it, or
    leave ``--resume`` a checkpoint that is not one."""
    from .train.trainer import RUN_FILES

    path = Path(out)
    if path.exists() and Path(source).exists() and path.resolve() == Path(source).resolve():
        raise ValueError(f"{out} is the model read: write the output elsewhere")
    if path.name in RUN_FILES and (path.parent / "config.yaml").is_file():
        raise ValueError(f"{out} is a file of the run in {path.parent or '.'}: write the output elsewhere")
    run_dir = path.resolve().parent.parent
    if path.resolve().parent.name == "checkpoints" and (run_dir / "config.yaml").is_file():
        raise ValueError(f"{out} is in the checkpoints folder of the run in {run_dir}: write the output elsewhere")


def _run_compress(args: argparse.Namespace) -> int:
    from .inspection import compress

    _not_a_run_file(args.out, args.checkpoint)
    result = compress(args.checkpoint, args.out, args.rank, args.scheme or "channel", args.skip)
    print(result["table"])
    print(result["totals"])
    if result.get("note"):
        print(f"note: {result['note']}")
    print(f"wrote {args.out} (max output change on a random input: {result['drift']:.3g}; load it with "
          "lrtrain.load)")
    return 0


def _export_arguments(p: argparse.ArgumentParser) -> None:
    # No `choices`: they live in export, which imports torch, and building the parser must not (the
    # export command names the valid formats when given another).
    p.add_argument("model", help="a run directory (its compact.pt), a compact model file or a checkpoint step_*.pt "
                                 "(the model as trained so far)")
    p.add_argument("--format", required=True,
                   help="what to write: torchscript, exported (torch.export's ExportedProgram, .pt2: "
                        "torch.export.load(path).module() runs it), onnx or state_dict")
    p.add_argument("-o", "--out", required=True, help="the file to write")
    p.add_argument("--input-size", type=int, nargs=4, metavar=("N", "C", "H", "W"),
                   help="example input shape (default: the one the model was trained on); the batch "
                        "dimension stays dynamic")
    p.add_argument("--opset", type=int, help="ONNX opset version (default: the exporter's)")
    p.add_argument("--fold-bn", action="store_true",
                   help="fold each BatchNorm into the conv before it (same outputs, fewer passes at inference)")
    p.add_argument("--deploy", action="store_true",
                   help="--fold-bn, and keep each factorized conv only where it runs faster than its dense form "
                        "on this machine's CPU at the example input size (measured; same outputs)")
    p.add_argument("--normalize", action="store_true",
                   help="build the input normalization the model was trained with into the exported model: it "
                        "then takes RGB images scaled to 0-1 (torchscript, exported and onnx)")
    p.add_argument("--data-dir", help="with --normalize, for a model file that does not record its normalization "
                                      "(written by an older lrtrain): where its run's data set is")
    p.add_argument("--layout", choices=["auto", "contiguous", "channels_last", "as_is"],
                   help="with --deploy: the weights' memory layout; auto (the default) deploys in NCHW and in "
                        "channels_last and keeps the faster model")


def _run_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from . import export, models
    from .deployment import deploy, layout_of
    from .fold import fold_batchnorm
    from .inspection import input_line, trained_with_arch

    _not_a_run_file(args.out, args.model)
    if (args.fold_bn or args.deploy) and args.format == "state_dict":
        flag = "--deploy" if args.deploy else "--fold-bn"
        raise ValueError(f"{flag} changes the architecture, which a state_dict does not carry (it loads into the "
                         "model of compact.pt): use torchscript, exported or onnx, or in Python "
                         "lrtrain.fold_batchnorm / lrtrain.deploy and lrtrain.save")
    if args.normalize and args.format == "state_dict":
        raise ValueError(export.STATE_DICT_HAS_NO_NORMALIZATION)
    if args.layout and not args.deploy:
        raise ValueError("--layout chooses how --deploy lays out the model: add --deploy")
    if args.data_dir and not args.normalize:
        raise ValueError("--data-dir tells --normalize where an older file's run data are: add --normalize")
    source = Path(args.model)
    if source.is_dir():
        source = source / "compact.pt"
        if not source.is_file():
            raise FileNotFoundError(f"{args.model} has no compact.pt: its run has not finished (continue it with "
                                    f"lrtrain train {args.model} --resume, or export one of its checkpoints, "
                                    f"{args.model}/checkpoints/step_*.pt: the model as trained so far), or make "
                                    "one with lrtrain compress")
    elif not source.exists():
        raise FileNotFoundError(f"no such run directory, compact model or checkpoint: {source}")
    model, arch = trained_with_arch(source)
    size = tuple(args.input_size or arch.get("input_size") or models.default_input_size(arch["model"]))
    written = model
    if args.deploy:
        written, choices = deploy(model, size, layout=args.layout or "auto", progress=True)
        kept = [c for c in choices if c.factorized]
        print(f"deploy ({layout_of(written)}): {len(kept)} of {len(choices)} factorized convs kept, the others "
              f"run faster dense here "
              f"(factorized {sum(c.factorized_ms for c in choices):.2f} ms, deployed "
              f"{sum(min(c.factorized_ms, c.dense_ms) for c in choices):.2f} ms, dense "
              f"{sum(c.dense_ms for c in choices):.2f} ms over these layers at input {'x'.join(map(str, size))})")
    elif args.fold_bn:
        written = fold_batchnorm(model, size)
    normalize = arch.get("normalize")
    if args.normalize and not normalize:  # a file of an older lrtrain: its run's data's, where they are found
        from .prediction import derived_facts

        normalize = derived_facts(source, size[-1], args.data_dir)["normalize"]
    normalize = normalize if args.normalize else None
    export.export(written, args.out, args.format, size, normalize,
                  **({"opset": args.opset} if args.opset else {}))
    diff = export.check_export(model, args.out, args.format, size, normalize)  # against the model as loaded
    check = ("not checked: onnxruntime is not installed" if diff is None
             else f"max abs difference from the model as loaded on a random batch: {diff:.3g}")
    folded = ", BatchNorm folded" if args.fold_bn or args.deploy else ""
    print(f"wrote {args.out} ({args.format}{folded}, example input {'x'.join(map(str, size))}; {check})")
    if args.normalize:
        print("the exported model normalizes its input itself: give it RGB images scaled to 0-1")
    elif arch.get("normalize") and args.format != "state_dict":
        print(f"{input_line(arch['normalize'])} (--normalize builds it into the exported model)")
    else:
        print(input_line(arch.get("normalize")))
    return 0


def _evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a run directory (its compact.pt, else its newest checkpoint), a compact model "
                                 "file or a checkpoint step_*.pt")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="data.KEY=VALUE",
                   help="the data set to score on, e.g. --set data.name=cifar100 (default: the run's own; "
                        "repeatable)")
    p.add_argument("--data-dir", help="where the data set is (default: the run's, else $LRTRAIN_DATA, else for "
                                      "CIFAR ../shared/data)")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:N")
    p.add_argument("--latency", action="store_true",
                   help="also time the model's forward pass against the dense model's on this CPU, batch 1 and 32")


def _run_evaluate(args: argparse.Namespace) -> int:
    import torch

    from . import models
    from .devices import resolve_device
    from .evaluation import evaluate, predicted_classes, resolve_source, scoring_data, shown_batches
    from .metrics import count, latency_ratio, model_dtype
    from .train import distributed

    model, cfg, arch, what, from_run, note = resolve_source(args.model, args.overrides)
    device = resolve_device(args.device, distributed.World().local_rank)
    data = scoring_data(cfg, arch, device, args.data_dir, args.overrides)
    if not from_run:  # a file of an older lrtrain away from its run: the data set is a guess
        missing = ("does not record its data set" if arch.get("normalize") else
                   "records neither its data set nor its input normalization")
        chosen = any(key.startswith("data.name=") for key in args.overrides)
        print(f"note: {what} {missing} (written by an older lrtrain) and no config.yaml of "
              f"its run is beside it: scored on {data.description}"
              + ("" if chosen else " (--set data.name=... names the data set it was trained on)"))
    outputs = predicted_classes(model, data, what)
    result = evaluate(model.to(device), shown_batches(data.test, "evaluate"), amp=False)
    top5 = f", top-5 {result['top5_acc']:.2f}%" if data.num_classes > 5 else ""
    print(f"{what} on {data.description}: top-1 {result['test_acc']:.2f}%{top5}, loss {result['test_loss']:.4f} "
          f"({result['images']} images, {device})")
    if note:
        print(f"note: {note}")
    name = arch.get("model") or cfg["model"]["name"]
    dense = models.create(name, num_classes=outputs).eval().to(model_dtype(model))  # timed alike
    compact, full = count(model.cpu(), data.input_size), count(dense, data.input_size)
    if compact.flops == full.flops and compact.params == full.params:
        print(f"{compact.flops / 1e6:.2f} M FLOPs, {compact.params / 1e6:.3f} M params: a dense {name}'s")
    else:
        print(f"{compact.flops / 1e6:.2f} M FLOPs ({full.flops / compact.flops:.2f}x fewer than a dense {name}), "
              f"{compact.params / 1e6:.3f} M params ({full.params / compact.params:.2f}x fewer)")
    if args.latency:
        for batch in (1, 32):
            ratio = latency_ratio(dense, model, (batch, *data.input_size[1:]), device="cpu")
            print(f"forward pass on this CPU ({torch.get_num_threads()} threads), batch {batch}: {ratio:.2f}x the "
                  "dense model's speed")
    return 0


def _predict_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a run directory (its compact.pt, else its newest checkpoint), a compact model "
                                 "file or a checkpoint step_*.pt")
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="image files (any format PIL reads); one that cannot be read gets an error line on stderr, "
                        "the others their predictions, and the exit status is 1")
    p.add_argument("--top", type=int, default=5, help="how many classes to list per image (default: 5)")
    p.add_argument("--device", default="cpu", help="cpu (the default), cuda, cuda:N or auto")
    p.add_argument("--data-dir", help="where the run's data set is, for a model file that does not record its "
                                      "input normalization (written by an older lrtrain)")


PREDICT_CHUNK = 64  # images read and classified together by lrtrain predict


def _run_predict(args: argparse.Namespace) -> int:
    import torch

    from .devices import resolve_device
    from .prediction import describe, predict, prepared, read_images
    from .train import distributed

    if args.top < 1:
        raise ValueError(f"--top must be at least 1, got {args.top}")
    device = resolve_device(args.device, distributed.World().local_rank)  # before reading anything
    model, facts, side, _ = prepared(args.model, args.data_dir)
    model = model.to(device)
    predicted = failed = 0
    # PREDICT_CHUNK images at a time, each chunk's lines printed as they come: thousands of files neither
    # wait for the last one nor sit in memory together
    for start in range(0, len(args.images), PREDICT_CHUNK):
        read = {}
        for path in args.images[start:start + PREDICT_CHUNK]:  # an unreadable file costs its own line only
            try:
                read[path] = read_images([path], side, facts.get("resize"))
            except (FileNotFoundError, ValueError) as err:
                print(f"lrtrain: error: {err}", file=sys.stderr, flush=True)
                failed += 1
        if read:
            probs, labels = predict(model, torch.cat(list(read.values())), facts.get("normalize"), args.top)
            print("\n".join(describe(list(read), probs, labels, facts.get("classes"))), flush=True)
            predicted += len(read)
    return 2 if not predicted else 1 if failed else 0


def _report_arguments(p: argparse.ArgumentParser) -> None:
    # Declared here, not in report.py, so building the parser does not import matplotlib.
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories written by lrtrain train")
    p.add_argument("-o", "--out", default="report", help="folder for README.md and the plots (default: report)")
    p.add_argument("--paper-points", metavar="YAML",
                   help="published results to plot beside the runs: a list of {label, speedup, top1}")
    p.add_argument("--layers", nargs="+", metavar="NAME",
                   help="layers whose singular values to plot (default: three spread across the network)")


def _run_report(args: argparse.Namespace) -> int:
    from . import report

    return report.run(args)


def _bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipes", nargs="+", metavar="RECIPE", help="recipe YAML files (or run directories)")
    p.add_argument("-o", "--out", default="bench",
                   help="folder of the runs (one per recipe, named by its file), bench.md/.csv and report/ "
                        "(default: bench)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of every recipe, e.g. --set train.epochs=30 (repeatable)")
    p.add_argument("--data-dir", help="where the data set is (default: $LRTRAIN_DATA, then ../shared/data from "
                                      "here and from the project)")
    p.add_argument("--device", help="cpu, cuda, cuda:N or auto (default: each recipe's train.device)")
    p.add_argument("--time-limit", type=float, metavar="SECONDS",
                   help="stop (resumably: the same command goes on) after the first epoch that ends past this "
                        "many seconds of the whole call")
    p.add_argument("--report-only", action="store_true", help="only tabulate and plot the runs finished so far")
    p.add_argument("--speed", action="store_true",
                   help="also time each compact model against the dense one on this CPU (batch 32)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads of the --speed timing (default: 2)")
    p.add_argument("--paper-points", metavar="YAML",
                   help="published results to plot beside the runs: a list of {label, speedup, top1}")


def _run_bench(args: argparse.Namespace) -> int:
    from . import benchmark

    return benchmark.run(args)


COMMANDS: dict[str, Command] = {  # in the order of a model's life: `lrtrain --help` lists them so
    "train": Command("train a model with a method, as a recipe says", _train_arguments, _run_train),
    "demo": Command("a short training run showing the whole pipeline", _demo_arguments, _run_demo),
    "evaluate": Command("test accuracy of a run, compact model or checkpoint; FLOPs and CPU speed against dense",
                        _evaluate_arguments, _run_evaluate),
    "predict": Command("classify image files with a trained model (top classes and probabilities)",
                       _predict_arguments, _run_predict),
    "info": Command("per-layer table of a model: shapes, FLOPs, ranks, what a scheme would do", _info_arguments,
                    _run_info),
    "compress": Command("decompose a trained model into a compact low-rank one (no fine-tuning)",
                        _compress_arguments, _run_compress),
    "export": Command("write a compact model as TorchScript, an ExportedProgram, ONNX or a plain state_dict",
                      _export_arguments, _run_export),
    "report": Command("plots and a Markdown summary from run directories", _report_arguments, _run_report),
    "bench": Command("train several recipes one after another (resumably), then one table and plots of them all",
                     _bench_arguments, _run_bench),
}
ALIASES = {"evaluate": ["eval"]}  # the name shared/DESIGN.md gives it
_CANONICAL = {alias: name for name, aliases in ALIASES.items() for alias in aliases}


def _version() -> str:
    from . import __version__

    return __version__


class _Parser(argparse.ArgumentParser):
    """Names the usual cause of a missing positional argument: a preceding option that takes several
    values (``--skip a b``) took it as one more of them."""

    _words: list[str] = []

    def parse_known_args(self, args=None, namespace=None):
        self._words = list(sys.argv[1:] if args is None else args)  # a subcommand's parser gets its own words
        return super().parse_known_args(args, namespace)

    def error(self, message: str):
        if message.startswith("the following arguments are required"):
            greedy = [option for a in self._actions if a.nargs in ("*", "+") for option in a.option_strings
                      if option in self._words]
            if greedy:
                message += (f" ({greedy[0]} takes every word that follows it: put the argument before "
                            f"{greedy[0]}, or end its values with --)")
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lrtrain", description="Compact low-rank CNNs: train, compress, measure.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    parser.add_argument("--version", action="version", version=f"lrtrain {_version()}")
    # Accept --debug after the subcommand too; SUPPRESS keeps the top-level value when it is absent.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        command.add_arguments(sub.add_parser(name, help=command.help, description=command.help, parents=[common],
                                             aliases=ALIASES.get(name, [])))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    shown = warnings.showwarning
    if not args.debug:  # one line a warning, as errors get: no file, line number and source line
        warnings.showwarning = _warning
    try:
        return _main(args)
    finally:
        warnings.showwarning = shown


def _warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"lrtrain: warning: {' '.join(str(message).split())}", file=file or sys.stderr)


def _main(args: argparse.Namespace) -> int:
    try:
        return COMMANDS[_CANONICAL.get(args.command, args.command)].run(args)
    except (ConfigError, OSError, ValueError) as err:  # OSError: a path that is a folder, unwritable, ...
        if args.debug:
            raise
        if isinstance(err, BrokenPipeError) and _stdout_closed():
            # its reader stopped early (`lrtrain info ... | head`): not a mistake to report, nor at exit's flush
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 128 + signal.SIGPIPE
        _error(err)
        return 2
    except KeyboardInterrupt as err:
        if args.debug:
            raise
        print("lrtrain: interrupted", file=sys.stderr)
        return 128 + getattr(err, "signum", signal.SIGINT)  # a second SIGTERM: 143, as a batch system expects
    except RuntimeError as err:
        # imported only now: a command that fails before training (a bad recipe) never loads torch
        from .train.stops import DivergenceError, OutOfMemory, is_out_of_memory

        if args.debug:
            raise
        if isinstance(err, (DivergenceError, OutOfMemory)):
            _error(err)
            return 1
        if not is_out_of_memory(err):  # out of memory outside the training loop (which says more itself)
            raise
        _error(f"out of memory: {str(err).splitlines()[0]} (lower data.batch_size or data.eval_batch_size)")
        return 1


def _stdout_closed() -> bool:
    """Whether standard output is a pipe whose reader has gone (poll reports an error on its write end)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll on this platform, or no real stdout
        return False


def _error(err: BaseException) -> None:
    """The one line a user mistake gets (messages of torch and others may span several)."""
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    print(f"lrtrain: error: {text}", file=sys.stderr)
