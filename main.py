"""Train and evaluate the 2d1d / leader-follower model on a processed dataset (SPEC §5, §6).

Examples::

    python main.py --dataset-path OUT --save-path RUNS --fold 0 --emotion valence \\
        --modality frame vggish mfcc --backbone-checkpoint res50_ir_0.887.pth
    python main.py -dataset_path OUT -model_save_path RUNS -model_load_path WEIGHTS \\
        -train_emotion valence -folds_to_run 4 -resume 0

Settings resolve as: defaults <- ``--demo`` recipe <- ``--config FILE`` <- flags.
Several GPUs: ``torchrun --nproc_per_node N main.py ...`` (DDP; rank 0 writes the files).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from base.errors import EXIT_CODES_HELP, UserError, run_cli, setup_logging
from base.training.cross_validation import ccc_line, format_summary, run_cross_validation
from base.training.devices import gpu_index_to_device, set_cpu_threads
from base.training.distributed import init_distributed, rank_config
from base.training.rank_exit import distributed_run, exit_process
from base.training.tensorboard_log import require_tensorboard
from configs import Config, add_config_arguments, demo_overrides, resolve
from model.weights import AUTHORS_WEIGHTS_URL

TRAINING_SECTIONS = ("model", "train")
AUTHORS_BACKBONE_NAME = "res50_ir_0.887"

# Config fields that the authors' command line also spells with a single dash (SPEC §8, issue 6).
AUTHORS_FLAG_FIELDS = (
    "model_name", "modality", "fold", "emotion", "head", "stamp", "experiment_name", "window_length",
    "hop_length", "batch_size", "learning_rate", "min_learning_rate", "patience", "factor",
    "gradual_release", "release_count", "early_stopping", "num_epochs", "min_num_epochs", "seed",
    "time_delay", "dataset_path", "save_path", "resume", "debug", "save_model", "backbone_mode",
    "cnn1d_embedding_dim", "cnn1d_channels", "cnn1d_kernel_size", "cnn1d_dropout",
    "load_best_at_each_epoch", "device",
)
EXTRA_ALIASES = {
    "fold": ("-folds_to_run",),
    "emotion": ("-train_emotion",),
    "save_path": ("-model_save_path",),
    "cpu_threads": ("-cpu",),
}
IGNORED_AUTHORS_FLAGS = ("-high_performance_cluster", "-python_package_path")

EPILOG = f"""\
backbone weights:
  The paper's visual backbone starts from the authors' IR-50 '{AUTHORS_BACKBONE_NAME}.pth'. Their
  ABAW2 link to it is dead (their GitHub issue #7); they now share it in the folder linked under
  'Model state dict' in the sucv/ABAW3 README:
    {AUTHORS_WEIGHTS_URL}
  With the file, pass --backbone-checkpoint FILE, or -model_load_path DIR [-backbone_state_dict NAME]
  as the authors did. Any bare IR-50 state dict or a best.pt of this project also works. Without one, pass
  --random-backbone to train the backbone from random weights: fine for the demo, clearly worse than
  the paper on Aff-Wild2.

boolean settings take 0/1 (or true/false); given without a value they mean 1 (e.g. --quiet).
a fold list (--fold 0 1 2 3 4 5) runs the folds in sequence and writes a CV summary table.
after exit 3 (e.g. disk full: checkpoint.pt keeps the last finished epoch) or 130, the same command
with --resume 1 continues from the last checkpoint.
"""


def build_parser() -> argparse.ArgumentParser:
    """The command line: every model/train config field as --kebab-case, plus the authors' names."""
    parser = argparse.ArgumentParser(
        prog="main.py",
        description="Train and evaluate continuous valence/arousal models on a processed dataset.",
        epilog=EPILOG + "\n" + EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    aliases = {name: (f"-{name}",) for name in AUTHORS_FLAG_FIELDS}
    for name, extra in EXTRA_ALIASES.items():
        aliases[name] = aliases.get(name, ()) + extra
    add_config_arguments(parser, TRAINING_SECTIONS, aliases=aliases)
    _allow_bare_booleans(parser)

    run = parser.add_argument_group("run options")
    run.add_argument("--demo", action="store_true",
                     help="start from the small demo recipe (configs.demo_overrides) before --config and flags")
    run.add_argument("-gpu", "--gpu", dest="gpu", type=int, default=None, metavar="N",
                     help="the authors' GPU index: device cuda:N when CUDA is available (--device wins)")
    run.add_argument("-model_load_path", "-load_path", "--load-path", dest="load_path", default=None,
                     metavar="DIR", help="folder holding the backbone state dict (the authors' -model_load_path)")
    run.add_argument("-backbone_state_dict", "--backbone-state-dict", dest="backbone_state_dict", default=None,
                     metavar="NAME", help=f"file name without .pth inside -model_load_path "
                                          f"(default {AUTHORS_BACKBONE_NAME} when a folder is given)")
    ignored = parser.add_argument_group("accepted for the authors' job scripts and ignored")
    for flag in IGNORED_AUTHORS_FLAGS:
        ignored.add_argument(flag, dest=flag.lstrip("-"), default=None, metavar="VALUE",
                             help="ignored (cluster / package path settings are not needed here)")
    return parser


def _allow_bare_booleans(parser: argparse.ArgumentParser) -> None:
    """Let boolean flags stand alone (``--quiet`` = ``--quiet 1``) while still taking 0/1."""
    for action in parser._actions:  # argparse offers no public way to adjust an added action
        if action.metavar == "0|1":
            action.nargs = "?"
            action.const = True


def backbone_from_authors_flags(load_path: str | None, state_dict_name: str | None) -> str | None:
    """``-model_load_path DIR -backbone_state_dict NAME`` -> ``DIR/NAME.pth`` (None when neither given)."""
    if load_path is None and state_dict_name is None:
        return None
    name = state_dict_name or AUTHORS_BACKBONE_NAME
    return str(Path(load_path or ".") / f"{name}.pth")


def config_from_args(args: argparse.Namespace) -> Config:
    """Resolve the config of a parsed command line (defaults <- demo <- config file <- flags)."""
    backbone = backbone_from_authors_flags(args.load_path, args.backbone_state_dict)
    if backbone is not None:
        if hasattr(args, "backbone_checkpoint"):
            raise UserError("give the backbone either as --backbone-checkpoint or as -model_load_path/"
                            "-backbone_state_dict, not both")
        args.backbone_checkpoint = backbone
    if args.gpu is not None and not hasattr(args, "device"):
        args.device = gpu_index_to_device(args.gpu)
    return resolve(args, extra=demo_overrides() if args.demo else None)


def parse_config(argv: list[str] | None = None) -> Config:
    """The resolved config of a command line (what ``main`` would train)."""
    return config_from_args(build_parser().parse_args(argv))


def main(argv: list[str] | None = None) -> int:
    """Parse, train every requested fold, print the summary table and the validation CCC line."""
    config = parse_config(argv)
    context = init_distributed(config.train.device)  # a 1-process context unless started by torchrun
    with distributed_run(context):  # the ranks leave together; a failed one makes the others stop at once
        config = rank_config(config, context)
        setup_logging(config.train.quiet)
        set_cpu_threads(config.train.cpu_threads)
        if config.train.tensorboard:
            require_tensorboard()
        results = run_cross_validation(config, context)
        if context.is_main:
            print(format_summary(results))
            print(ccc_line(results))
    return 0


if __name__ == "__main__":
    exit_process(run_cli(main))
