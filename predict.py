"""Predict with trained runs: a test-set submission, its validator, the validation CCC, and any video.

Examples::

    # one <trial>.txt per test trial (valence and arousal runs, any subset of the six folds)
    python predict.py test --dataset-path OUT --runs runs/*valence*_fold* runs/*arousal*_fold* \\
        --output submission --database Affwild2
    # check a submission folder against the test videos' frame counts
    python predict.py validate submission --database Affwild2
    # the same prediction code on the validation set, scored
    python predict.py validation --dataset-path OUT --runs runs/ABAW2_2d1d_frame-vggish-mfcc_both_sh_fold0_demo
    # valence/arousal traces of any video: a CSV and a plot
    python predict.py video my_clip.mp4 --runs RUN_DIR --output traces [--detector haar|mtcnn|openface]

With no arguments (IDE use) it runs ``test`` with the paths of configs.py or of the config file named by
``$ABAW2_LFAF_CONFIG``: the runs under ``save_path``, the dataset ``dataset_path``, the submission into
``submission_path``, checked against ``database_path`` when set. A later Aff-Wild2 release needs the
layout options of preprocessing (``--test-list`` ...) for ``--database``.

``--runs`` takes run folders (each holding the best.pt a training run writes), best.pt files, or a
folder of run folders. Runs are grouped by emotion (a ``both`` run serves both) and the folds of an
emotion are merged by CCC centering, then clipped to [-1, 1] (SPEC §6).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from base.errors import EXIT_CODES_HELP, UserError, run_cli, setup_logging

logger = logging.getLogger("predict")

PARTITIONS = ("Validation_Set", "Train_Set")


def _add_common(parser: argparse.ArgumentParser, runs: bool = True) -> None:
    if runs:
        parser.add_argument("--runs", "-runs", nargs="+", default=None, metavar="RUN",
                            help="run folders, best.pt files, or folders of run folders (default: save_path)")
        parser.add_argument("--device", "-device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
        parser.add_argument("--batch-size", type=int, default=None, metavar="N",
                            help="windows per forward pass (default: each run's training batch size)")
    parser.add_argument("--quiet", action="store_true", help="warnings only, no progress bars")
    parser.add_argument("--config", "-config", dest="config_file", default=None, metavar="FILE",
                        help="JSON or YAML config file: the defaults of the paths (default: $ABAW2_LFAF_CONFIG)")


def _add_layout(parser: argparse.ArgumentParser) -> None:
    """Where a later Aff-Wild2 release keeps its parts (as preprocessing.py; default: the config's)."""
    parser.add_argument("--annotations", default=None, metavar="DIR", help="VA annotation folder of --database")
    parser.add_argument("--video-dirs", nargs="+", default=None, metavar="DIR", help="video folders of --database")
    parser.add_argument("--test-list", default=None, metavar="FILE",
                        help="the organisers' list of test trial names (later releases)")


def _add_dataset(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument("--dataset-path", "-dataset_path", dest="dataset_path", default=None, metavar="OUT",
                        help=help_text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="predict.py", description=__doc__, epilog=EXIT_CODES_HELP,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    test = commands.add_parser("test", help="write a test-set submission (one <trial>.txt per test trial)")
    _add_dataset(test, "processed dataset holding the test trials (default: the one the runs were trained on)")
    test.add_argument("--output", "-output", default=None, metavar="DIR",
                      help="submission folder (created; default: submission_path)")
    test.add_argument("--database", "-database", default=None, metavar="DB",
                      help="raw database: check every test trial against its video's frame count "
                           "(default: database_path when set)")
    _add_layout(test)
    _add_common(test)

    validate = commands.add_parser("validate", help="check a submission folder")
    validate.add_argument("submission", metavar="SUBMISSION_DIR", nargs="?", default=None,
                          help="the submission folder (default: submission_path)")
    validate.add_argument("--database", "-database", default=None, metavar="DB",
                          help="raw database: frame counts from its test videos (what the challenge counts)")
    _add_layout(validate)
    _add_dataset(validate, "processed dataset: frame counts of its test trials (when no --database)")
    _add_common(validate, runs=False)

    validation = commands.add_parser("validation", help="predict a labeled partition and print its CCC")
    _add_dataset(validation, "processed dataset (default: the one the runs were trained on)")
    validation.add_argument("--partition", choices=PARTITIONS, default=PARTITIONS[0],
                            help="partition to score (default: Validation_Set)")
    validation.add_argument("--output", "-output", default=None, metavar="DIR",
                            help="also write the merged predictions there, in the submission format")
    _add_common(validation)

    video = commands.add_parser("video", help="valence/arousal traces of any video: a CSV and a PNG")
    video.add_argument("video", metavar="VIDEO", help="a video file (mp4, avi, mkv, webm, ...)")
    video.add_argument("--output", "-output", required=True, metavar="DIR", help="folder for the CSV and PNG")
    video.add_argument("--detector", choices=("haar", "mtcnn", "openface"), default="",
                       help="face detector (default: openface when an OpenFace source is given, else haar)")
    video.add_argument("--face-margin", type=float, default=None, metavar="X",
                       help="face crop side / longer face-box side (default: per detector, 1.1-1.3)")
    openface_source = video.add_mutually_exclusive_group()
    openface_source.add_argument("--openface-bin", default="", metavar="FILE",
                                 help="OpenFace FeatureExtraction binary to run on the frames")
    openface_source.add_argument("--openface-output", default="", metavar="DIR",
                                 help="an OpenFace CSV of the video, or a folder holding <video stem>.csv")
    video.add_argument("--vggish-checkpoint", default="", metavar="FILE",
                       help="the vggish_model.ckpt preprocessing used (default: the one the runs' dataset records; "
                            "the demo's random one is DATASET/vggish_random/vggish_model.ckpt)")
    _add_dataset(video, "processed dataset the runs were trained on, for its mean_std_dict.pkl "
                        "(default: the one each run's config names)")
    _add_common(video)
    return parser


# ----------------------------------------------------------------------------- commands


def _dataset_for(args: argparse.Namespace, models: list) -> Path:
    """``--dataset-path``, else the single dataset the runs were trained on."""
    if args.dataset_path:
        return Path(args.dataset_path)
    named = sorted({fm.config.train.dataset_path for fm in models if fm.config.train.dataset_path})
    if len(named) == 1 and Path(named[0]).is_dir():
        logger.info("dataset: %s (from the runs' config)", named[0])
        return Path(named[0])
    raise UserError("pass --dataset-path with the processed dataset" + (
        f" (the runs name {', '.join(named)})" if named else ""))


def _check_batch_size(args: argparse.Namespace) -> None:
    if args.batch_size is not None and args.batch_size <= 0:
        raise UserError(f"--batch-size must be positive, got {args.batch_size}")


def _open_runs(args: argparse.Namespace):
    """Device, fold models and processed dataset of a prediction command (arguments checked first)."""
    from base.data.processed import ProcessedDataset
    from base.prediction.prediction import load_fold_models
    from base.training.devices import resolve_device

    _check_batch_size(args)
    device = resolve_device(args.device)
    models = load_fold_models(args.runs)
    return device, models, ProcessedDataset(_dataset_for(args, models))


def _statistics_for(models, dataset, quiet: bool = True):
    """The dataset's mean/std when any model reads z-scored features, else None.

    Runs that z-score test trials with ``Target_Set`` statistics get them computed from the dataset's
    test trials when its mean_std_dict.pkl predates them.
    """
    from base.data.processed import file_stem
    from base.preprocessing.statistics import TARGET_SET, with_target_set
    from base.training.cross_validation import needs_statistics

    if not any(needs_statistics(fm.modalities) for fm in models):
        return None
    mean_std = dataset.mean_std()
    if any(fm.config.train.test_statistics == TARGET_SET for fm in models):
        features = sorted({file_stem(m) for fm in models for m in fm.modalities if m != "frame"})
        mean_std = with_target_set(mean_std, dataset, features, quiet)
    return mean_std


def run_test(args: argparse.Namespace) -> int:
    from base.prediction.prediction import check_inputs, check_same_lengths, predict_ensemble
    from base.prediction.submission import expected_from_database, write_submission

    device, models, dataset = _open_runs(args)
    trials = dataset.partition_trials(dataset.test_partition)
    if not trials:
        raise UserError(f"the processed dataset {dataset.root} lists no test trials ({dataset.test_partition})")
    lengths = {trial: dataset.n_frames(trial) for trial in trials}
    expected = lengths
    if args.database:
        expected = expected_from_database(args.database, _layout(args))
        check_same_lengths(lengths, expected, f"database {args.database}")
        trials = sorted(expected)
    check_inputs(models, dataset, trials, args.quiet)
    mean_std = _statistics_for(models, dataset, args.quiet)
    prediction = predict_ensemble(models, dataset, trials, mean_std, device, args.batch_size, quiet=args.quiet)
    written = write_submission(args.output, {trial: prediction.values(trial) for trial in trials})
    runs = ", ".join(f"{emotion}: {len(members)} run(s)" for emotion, members in prediction.groups.items())
    print(f"wrote {len(written)} trial files to {args.output} ({runs})")
    return report_submission(args.output, expected)


def report_submission(folder: str, expected: dict[str, int]) -> int:
    """Validate a submission folder, print each problem and the summary; 0 when it is valid."""
    from base.prediction.submission import validate_submission

    report = validate_submission(folder, expected)
    for problem in report.problems:
        print(f"  problem: {problem}")
    print(report.summary())
    return 0 if report.ok else 1


def run_validate(args: argparse.Namespace) -> int:
    from base.prediction.submission import expected_from_database, expected_from_dataset

    if args.database:
        expected = expected_from_database(args.database, _layout(args))
    elif args.dataset_path:
        expected = expected_from_dataset(args.dataset_path)
    else:
        raise UserError("pass --database DB (the test videos' frame counts) or --dataset-path OUT")
    return report_submission(args.submission, expected)


def run_validation(args: argparse.Namespace) -> int:
    from base.prediction.prediction import format_validation, score_validation
    from base.prediction.submission import write_submission

    device, models, dataset = _open_runs(args)
    result, prediction = score_validation(models, dataset, args.partition, device, args.batch_size, args.quiet)
    trials = prediction.trials
    print(format_validation(result))
    if args.output:
        if len(prediction.groups) < 2:
            raise UserError("--output writes valence and arousal: add runs for the missing emotion")
        write_submission(args.output, {trial: prediction.values(trial) for trial in trials})
        print(f"wrote {len(trials)} trial files to {args.output}")
    return 0


def run_video(args: argparse.Namespace) -> int:
    from base.prediction.prediction import load_fold_models
    from base.prediction.video_traces import VideoOptions, video_traces
    from base.training.devices import resolve_device

    _check_batch_size(args)
    device = resolve_device(args.device)  # a missing GPU is reported before faces and VGGish are computed
    options = VideoOptions(
        detector=args.detector, face_margin=args.face_margin, openface_bin=args.openface_bin,
        openface_output=args.openface_output, vggish_checkpoint=args.vggish_checkpoint,
        dataset_path=args.dataset_path or "", batch_size=args.batch_size, device=str(device), quiet=args.quiet,
    )
    if args.face_margin is not None and args.face_margin <= 0:
        raise UserError(f"--face-margin must be positive, got {args.face_margin}")
    models = load_fold_models(args.runs)
    traces = video_traces(args.video, models, args.output, options)
    print(f"{traces.video.name}: {traces.n_frames} frames, face found in {int(traces.face_found.sum())}; "
          f"predicted {', '.join(traces.emotions)}")
    print(f"wrote {traces.csv_path} and {traces.png_path}")
    return 0


COMMANDS = {"test": run_test, "validate": run_validate, "validation": run_validation, "video": run_video}


def _layout(args: argparse.Namespace):
    from base.preprocessing.database import DatabaseLayout

    return DatabaseLayout(args.annotations or "", tuple(args.video_dirs or ()), args.test_list or "")


def apply_config_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the paths not given on the command line from the config (configs.py, then the config file)."""
    from configs import load_config

    config = load_config(args.config_file)
    if hasattr(args, "runs") and not args.runs:
        args.runs = [config.train.save_path]
    if hasattr(args, "dataset_path") and not args.dataset_path:
        args.dataset_path = config.train.dataset_path or None
    if args.command == "test" and not args.output:
        args.output = config.predict.submission_path
    if args.command == "validate" and not args.submission:
        args.submission = config.predict.submission_path
    if args.command in ("test", "validate"):
        args.database = args.database or config.features.database_path or None
        args.annotations = args.annotations or config.features.annotations
        args.video_dirs = args.video_dirs or list(config.features.video_dirs)
        args.test_list = args.test_list or config.features.test_list
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv or ["test"])  # no arguments: the test-set submission (IDE use)
    setup_logging(args.quiet)
    return COMMANDS[args.command](apply_config_defaults(args))


if __name__ == "__main__":
    sys.exit(run_cli(main))
