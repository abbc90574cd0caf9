"""The ``lrtrain`` command line: one subcommand per entry of `COMMANDS`.

A subcommand is a `Command`: a help line, a function adding its arguments to its parser, and a function
running it (returning the exit status). User mistakes (bad recipe, missing data, invalid value) end
with one line ``lrtrain: error: ...`` and status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any, Callable

from .config import ConfigError, load_recipe, resolve

# The demo's method: the one line to change to show a low-rank method (e.g. {"name": "lrpet", ...}).
DEMO_METHOD: dict[str, Any] = {"name": "dense"}


@dataclass(frozen=True)
class Command:
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _fit(cfg: dict[str, Any], *, resume: bool, overwrite: bool, time_limit: float | None) -> int:
    from .train import Trainer, distributed

    try:
        trainer = Trainer(cfg)
        summary = trainer.fit(resume=resume, overwrite=overwrite, time_limit=time_limit)
    finally:
        distributed.shutdown()
    if summary["finished"] and trainer.world.is_main:
        print(f"results in {summary['run_dir']}/: summary.json, metrics.csv, config.yaml, compact.pt "
              f"(final accuracy {summary['final_acc']:.2f}%)")
    return 0


def _train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="recipe YAML file, or a run directory (its config.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key, e.g. --set optim.lr=0.05 (repeatable)")
    p.add_argument("--data-dir", help="where the data set is (default: $LRTRAIN_DATA, then ../shared/data)")
    p.add_argument("--out-dir", help="run directory (default: the recipe's out_dir, runs/<name>)")
    p.add_argument("--resume", action="store_true", help="continue from the run directory's newest checkpoint")
    p.add_argument("--overwrite", action="store_true", help="start again in a run directory that holds a run")
    p.add_argument("--time-limit", type=float, metavar="SECONDS",
                   help="stop with a checkpoint after the first epoch that ends past this many seconds")


def _run_train(args: argparse.Namespace) -> int:
    cfg = load_recipe(args.recipe, args.overrides)
    if args.data_dir:
        cfg["data"]["dir"] = args.data_dir
    if args.out_dir:
        cfg["out_dir"] = args.out_dir
    return _fit(cfg, resume=args.resume, overwrite=args.overwrite, time_limit=args.time_limit)


def demo_recipe(data_dir: str | None = None, epochs: int = 2) -> dict[str, Any]:
    """The demo: ResNet-20 on a CIFAR-10 subset when CIFAR-10 is found, else on the generated set."""
    from .data import find_cifar

    try:
        find_cifar("cifar10", data_dir)
        data = {"name": "cifar10", "dir": data_dir, "train_size": 4000, "test_size": 1000}
    except FileNotFoundError:
        data = {"name": "sample", "train_size": 4000, "test_size": 1000}
    return resolve({
        "name": "demo",
        "model": {"name": "resnet20"},
        "data": {**data, "batch_size": 64},
        "optim": {"lr": 0.05, "weight_decay": 5e-4},
        "schedule": {"name": "cosine"},
        "train": {"epochs": epochs},
        "method": DEMO_METHOD,
    }, source="demo")


def _demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="where CIFAR-10 is (default: $LRTRAIN_DATA, then ../shared/data)")
    p.add_argument("--out-dir", default="runs/demo", help="run directory (replaced at each demo)")
    p.add_argument("--epochs", type=int, default=2, help="training epochs")


def _run_demo(args: argparse.Namespace) -> int:
    cfg = demo_recipe(args.data_dir, args.epochs)
    cfg["out_dir"] = args.out_dir
    print(f"demo: {cfg['model']['name']} with method {cfg['method']['name']!r} on {cfg['data']['name']}, "
          f"{args.epochs} epochs (a few minutes on a CPU)")
    return _fit(cfg, resume=False, overwrite=True, time_limit=None)


COMMANDS: dict[str, Command] = {
    "train": Command("train a model with a method, as a recipe says", _train_arguments, _run_train),
    "demo": Command("a short training run showing the whole pipeline", _demo_arguments, _run_demo),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lrtrain",
                                     description="Compact low-rank CNNs: train, compress, measure.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    # Accept --debug after the subcommand too; SUPPRESS keeps the top-level value when it is absent.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        command.add_arguments(sub.add_parser(name, help=command.help, description=command.help, parents=[common]))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    from .train import DivergenceError

    try:
        return COMMANDS[args.command].run(args)
    except DivergenceError as err:
        if args.debug:
            raise
        print(f"lrtrain: error: {err}", file=sys.stderr)
        return 1
    except (ConfigError, FileNotFoundError, ValueError) as err:
        if args.debug:
            raise
        print(f"lrtrain: error: {err}", file=sys.stderr)
        return 2
