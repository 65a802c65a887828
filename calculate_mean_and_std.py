"""Write ``mean_std_dict.pkl``: scalar mean/std of each audio feature per fold and partition.

The features are those of the dataset's feature sets (``dataset_info.pkl``): mfcc egemaps vggish
(abaw2), egemaps_functionals (abaw5); logmel is not normalised (the authors' ABAW5 reader does not).

Usage:
    python calculate_mean_and_std.py --output PROCESSED_DATASET [--features mfcc vggish ...] [--quiet]
    python calculate_mean_and_std.py      # the dataset_path of configs.py or of the config file
"""

from __future__ import annotations

import argparse
import logging
import sys

from base.data.processed import MEAN_STD, ProcessedDataset
from base.errors import UserError, run_cli, setup_logging
from base.preprocessing.statistics import compute_mean_std
from base.safe_pickle import save_pickle
from configs import load_config

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--output", "--dataset-path", "-dataset_path", dest="output", default=None, metavar="DIR",
        help="the processed dataset folder (holds dataset_info.pkl and npy_data/); the result is written there "
             "(default: dataset_path of the config)",
    )
    parser.add_argument("--config", "-config", dest="config_file", default=None, metavar="FILE",
                        help="JSON or YAML config file (for its dataset_path)")
    parser.add_argument(
        "--features", nargs="+", default=None, metavar="STEM",
        help="feature file stems (default: mfcc egemaps vggish for the abaw2 features, egemaps_functionals for "
             "abaw5, plus landmark au when present; logmel is not normalised)",
    )
    parser.add_argument("--quiet", action="store_true", help="only warnings and errors, no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.quiet)
    output = args.output or load_config(args.config_file).train.dataset_path
    if not output:
        raise UserError("give --output DIR (the processed dataset), or set dataset_path in configs.py or a config file")
    dataset = ProcessedDataset(output)
    statistics = compute_mean_std(dataset, args.features, quiet=args.quiet)
    path = save_pickle(statistics, dataset.root / MEAN_STD)
    logger.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
