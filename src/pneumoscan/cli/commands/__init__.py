"""One module per command, chosen from one table: each has `add(subparsers)` (its options, generated from its
settings dataclass where it has one) and `run(args, console, out, command)`; some also `outputs(args)`, which
checks what the command will write before anything is loaded (default: the folder `--out`)."""

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

from pneumoscan.cli.commands import (
    adapt,
    audit,
    demo,
    ensemble,
    evaluate,
    export,
    keys,
    models,
    monitor,
    predict,
    pretrain,
    serve,
    study,
    synth,
    train,
)


@dataclass(frozen=True)
class Command:
    """A command's name, how it adds its parser and the module that runs it."""

    name: str
    add: Callable[..., None]
    module: ModuleType


# in the order `pneumoscan --help` lists them
COMMANDS: tuple[Command, ...] = (
    Command("synth", synth.add, synth),
    Command("train", train.add, train),
    Command("study", study.add, study),
    Command("compare", study.add_compare, study),
    Command("evaluate", evaluate.add, evaluate),
    Command("audit", audit.add, audit),
    Command("predict", predict.add, predict),
    Command("serve", serve.add, serve),
    Command("keys", keys.add, keys),
    Command("export", export.add, export),
    Command("pretrain", pretrain.add, pretrain),
    Command("ensemble", ensemble.add, ensemble),
    Command("adapt", adapt.add, adapt),
    Command("monitor", monitor.add, monitor),
    Command("explain", predict.add_explain, predict),
    Command("demo", demo.add, demo),
    Command("models", models.add, models),
)
BY_NAME = {command.name: command for command in COMMANDS}
