"""Preprocess an Aff-Wild2-style database into the authors' per-trial npy format, or make the demo one.

Examples:
    python preprocessing.py --make-demo demo_workspace/Affwild2 --seed 0 [--demo-layout abaw3]
    python preprocessing.py --database /data/Affwild2 --output /data/Affwild2_processed --jobs 8 \\
        --vggish-checkpoint vggish_model.ckpt --vggish-pca-params vggish_pca_params.npz
    # both generations: the paper's files and the ABAW5 ones (logmel.npy, egemaps_functionals.npy)
    python preprocessing.py --database /data/Affwild2 --output /data/Affwild2_processed --features abaw2 abaw5 \\
        --vggish-checkpoint vggish_model.ckpt
    # the ABAW5 files alone: no VGGish weights, no TensorFlow
    python preprocessing.py --database /data/Affwild2 --output /data/Affwild2_abaw5 --features abaw5
    # a later ABAW release: annotations and videos are found in the database; the test set is the list
    python preprocessing.py --database /data/ABAW6 --output /data/ABAW6_processed \\
        --test-list Valence_Arousal_Estimation_Challenge_test_set_release.txt --vggish-checkpoint ...
    # IDE: with database_path and dataset_path set in configs.py (or a config file), no arguments
    python preprocessing.py

The abaw2 features' VGGish needs the AudioSet release's ``vggish_model.ckpt`` (and optionally
``vggish_pca_params.npz``), or the same weights in PyTorch layout: the authors' ``vggish.pth`` (linked
from the sucv/ABAW3 README); nothing is downloaded. Only the demo database may be preprocessed without them: random weights in the
real checkpoint format are created then, and the log and dataset_info.pkl say so.

On a cluster, N shards (--shard 1/N .. N/N) may run at the same time, on any machines sharing OUT;
the last to finish writes dataset_info.pkl and the summary (or: --output OUT --finalize).
job_preprocess.pbs and job_preprocess.slurm submit them as a job array.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import configs
from base.errors import EXIT_SOME_SKIPPED, UserError, run_cli, setup_logging

if TYPE_CHECKING:
    from base.preprocessing.preprocess import TrialResult
    from base.preprocessing.shards import Shard

log = logging.getLogger("preprocessing")

EXIT_CODES = """\
exit codes:
  0    every trial is ready
  1    done, but some trials are bad input and were skipped (listed in preprocessing_summary.csv)
  2    bad input or arguments: the error line says what to fix (--finalize: shards not done yet)
  3    the machine failed: no space left, output not writable, a worker process killed (signal 9
       usually means out of memory: lower --jobs), ffmpeg or openSMILE missing. No new work was
       started, finished trials are kept, the error line names the cause and the remedy; then
       rerun the same command to continue
  130  interrupted (Ctrl-C): finished work is kept; rerun the same command to resume
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--make-demo", metavar="DIR", help="write the demo database (SPEC §1 layout) to DIR and exit")
    parser.add_argument("--output", "-output", "--dataset-path", dest="dataset_path", default=argparse.SUPPRESS,
                        metavar="OUT", help="folder for dataset_info.pkl and npy_data/ (created; reruns resume); "
                                            "default: TrainConfig.dataset_path")
    parser.add_argument("--keep-cache", action="store_true", help="keep OUT/.cache (wav and per-video features) after success")
    parser.add_argument("--quiet", action="store_true", help="warnings only, no progress bars")
    parser.add_argument("--shard", metavar="I/N", help="process only the I-th of N disjoint sets of videos (1-based: "
                        "1/N .. N/N; both trials of a video together); the N shards may run at the same time on "
                        "machines sharing OUT, and the last to finish writes dataset_info.pkl")
    parser.add_argument("--finalize", action="store_true", help="with --output only: write dataset_info.pkl and "
                        "the summary of a sharded OUT once every shard is done, else list what is missing")
    configs.add_config_arguments(parser, sections=("demo", "features"),
                                 aliases={"demo_seed": ("--seed", "-seed"), "jobs": ("-j",),
                                          "database_path": ("--database", "-database")})
    return parser


def resolve_vggish(features: configs.FeatureConfig, database: Path, output: Path):
    from base.preprocessing.demo import MARKER
    from base.preprocessing.preprocess import VggishSource, random_vggish_checkpoint
    from vggish import checkpoint as vggish_checkpoint
    from vggish.engines import VggishEngine

    if features.vggish_engine == VggishEngine.TORCH and features.vggish_device == "gpu":
        from vggish.torch_extractor import torch_device

        torch_device(features.vggish_device)  # no GPU for torch: one line now, not a broken worker pool later
    if features.vggish_checkpoint:
        vggish_checkpoint.check_checkpoint(features.vggish_checkpoint)
        if features.vggish_pca_params:
            vggish_checkpoint.check_pca_params(features.vggish_pca_params)
        return VggishSource(features.vggish_checkpoint, features.vggish_pca_params or None, random_weights=False)
    if not (database / MARKER).is_file():
        raise UserError(
            "VGGish needs --vggish-checkpoint vggish_model.ckpt (and optionally --vggish-pca-params "
            "vggish_pca_params.npz) from the AudioSet VGGish release, or --vggish-checkpoint vggish.pth "
            "(the authors' file, linked from the sucv/ABAW3 README); only the demo database runs without them"
        )
    path = random_vggish_checkpoint(output / "vggish_random")
    log.warning("=" * 72)
    log.warning("DEMO: VGGish runs with RANDOM weights (%s); its features carry no AudioSet knowledge", path)
    log.warning("=" * 72)
    return VggishSource(str(path), None, random_weights=True)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.quiet)
    config = configs.resolve(args)
    if args.make_demo:
        from base.preprocessing.demo import make_demo_database

        root = make_demo_database(args.make_demo, config.demo, quiet=args.quiet)
        log.info("demo database ready: %s", root)
        return 0
    if args.finalize:
        if not config.train.dataset_path or args.shard:
            parser.error("--finalize takes --output OUT only")
        from base.preprocessing.preprocess import finalize_shards

        return report(finalize_shards(config.train.dataset_path), Path(config.train.dataset_path))
    if not config.features.database_path or not config.train.dataset_path:
        parser.error("give --database DIR and --output OUT (or set database_path and dataset_path in configs.py "
                     f"or a config file: --config FILE, ${configs.CONFIG_FILE_ENV}), or --make-demo DIR")
    from base.preprocessing.preprocess import preprocess_database
    from base.preprocessing.shards import parse_shard

    shard = parse_shard(args.shard) if args.shard else None

    database, output = Path(config.features.database_path), Path(config.train.dataset_path)
    if output.exists() and not output.is_dir():
        raise UserError(f"output path {output} is a file; give a folder (it is created if missing)")
    if not database.is_dir():
        raise UserError(f"database folder {database} does not exist")
    from base.preprocessing.database import DatabaseLayout, discover_trials

    discover_trials(database, DatabaseLayout.of(config.features))  # checks the layout before any heavy set-up
    # VGGish only for the abaw2 features: abaw5 alone needs no weights and starts no TensorFlow
    vggish_source = (resolve_vggish(config.features, database, output)
                     if configs.FeatureSet.ABAW2 in config.features.features else None)
    results = preprocess_database(database, output, config.features, vggish_source,
                                  quiet=args.quiet, keep_cache=args.keep_cache, shard=shard)
    return report(results, output, shard)


def report(results: Sequence[TrialResult], output: Path, shard: Shard | None = None) -> int:
    """Log what is ready; a warning line and exit 1 when bad trials were skipped."""
    from base.preprocessing.preprocess import SKIPPED, SUMMARY_NAME
    from base.preprocessing.shards import SHARD_DIR

    summary = output / SUMMARY_NAME if shard is None else output / SHARD_DIR / shard.results_name
    skipped = [r for r in results if r.status == SKIPPED]
    ok = len(results) - len(skipped)
    log.info("%d trials ready in %s, %d skipped; summary: %s", ok, output / "npy_data", len(skipped), summary)
    if skipped:
        print(f"warning: {len(skipped)} of {len(results)} trials skipped (see {summary})", file=sys.stderr)
        return EXIT_SOME_SKIPPED
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
