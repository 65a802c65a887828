"""Every knob of the project, as frozen dataclasses with defaults.

Resolution order (nanoGPT style): dataclass defaults, then a JSON/YAML config file, then the
command line. Unknown keys and values of the wrong type are rejected with the key's name.
The resolved config is written into every run folder and every checkpoint (``save_config``).

IDE users (no command line): edit the defaults below (e.g. ``FeatureConfig.database_path`` and
``TrainConfig.dataset_path``), or keep your settings in a JSON/YAML file named by ``DEFAULT_CONFIG_FILE``
below or by the ``ABAW2_LFAF_CONFIG`` environment variable; it is read whenever no ``--config`` is
given, so every script runs with no arguments.

Sections:
    DemoConfig      the embedded demo database (``preprocessing.py --make-demo``)
    FeatureConfig   preprocessing: frame size, audio rate, openSMILE, VGGish
    ModelConfig     the 2d1d visual block, aural TCNs and leader-follower fusion (SPEC §4)
    TrainConfig     the authors' training recipe (SPEC §5) and run bookkeeping
    PredictConfig   where ``predict.py`` writes the test-set submission

Field names are unique across sections, so that every field is also a flat ``--kebab-case``
command-line flag. One field shares its name with a section: ``features`` (the feature sets a
preprocessing run makes) is also the name of the FeatureConfig section; in an override a mapping
means the section, anything else (a list, one name) the field.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import json
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from base import atomic
from base.errors import UserError


class Modality(enum.StrEnum):
    """Input streams a model can read; the value is the npy file stem on disk (SPEC §2, §9)."""

    FRAME = "frame"
    VGGISH = "vggish"
    MFCC = "mfcc"
    EGEMAPS = "egemaps"
    LANDMARK = "flm"
    ACTION_UNIT = "fau"
    LOGMEL = "logmel"  # VGGish input patches (96 x 64) per frame: the ABAW5 models' audio backbone input
    EGEMAPS_FUNCTIONALS = "egemaps_functionals"  # 88 eGeMAPS functionals of 1 s per frame (ABAW5)

    @property
    def file_stem(self) -> str:
        return MODALITY_FILE_STEM[self]

    @property
    def feature_dim(self) -> int:
        """Width of one time step of this modality (frames are images: 0)."""
        return MODALITY_FEATURE_DIM[self]


MODALITY_FILE_STEM = {
    Modality.FRAME: "frame",
    Modality.VGGISH: "vggish",
    Modality.MFCC: "mfcc",
    Modality.EGEMAPS: "egemaps",
    Modality.LANDMARK: "landmark",
    Modality.ACTION_UNIT: "au",
    Modality.LOGMEL: "logmel",
    Modality.EGEMAPS_FUNCTIONALS: "egemaps_functionals",
}

MODALITY_FEATURE_DIM = {
    Modality.FRAME: 0,
    Modality.VGGISH: 128,
    Modality.MFCC: 39,
    Modality.EGEMAPS: 23,
    Modality.LANDMARK: 136,
    Modality.ACTION_UNIT: 17,
    Modality.LOGMEL: 0,  # a (96, 64) log-mel patch per step, embedded by VGGish inside the model
    Modality.EGEMAPS_FUNCTIONALS: 88,
}


class ModelName(enum.StrEnum):
    """Model families (``model_name`` config key); ``model.variants`` holds their builders."""

    TWO_D_ONE_D = "2d1d"  # ABAW2 (2021): one modality unimodal, more leader-follower fusion (SPEC §4)
    LFAN = "lfan"  # ABAW5 (2023): leader-follower attention network (SPEC-ABAW5 §3)
    CAN = "can"  # ABAW5 (2023): channel attention network (SPEC-ABAW5 §3)


EMOTIONS = ("valence", "arousal")
VGGISH_ENGINES = ("tf", "torch")  # the values of vggish.engines.VggishEngine (configs imports no vggish code)


class FeatureSet(enum.StrEnum):
    """The arrays a preprocessing run writes per trial (``features`` config key; README: pipeline table)."""

    ABAW2 = "abaw2"  # the paper's (2021): frame, mfcc, egemaps (23 LLDs), vggish, label
    ABAW5 = "abaw5"  # the authors' second generation (2023, sucv/ABAW3): frame, logmel, egemaps_functionals, label

    @property
    def files(self) -> tuple[str, ...]:
        """npy file stems of this set (``label`` only for annotated trials)."""
        return FEATURE_SET_FILES[self]


FEATURE_SET_FILES = {
    FeatureSet.ABAW2: ("frame", "mfcc", "egemaps", "vggish", "label"),
    FeatureSet.ABAW5: ("frame", "logmel", "egemaps_functionals", "label"),
}


def feature_files(feature_sets: tuple[str, ...]) -> tuple[str, ...]:
    """npy file stems the feature sets write together, each once, in the order of the sets.

    >>> feature_files(("abaw2", "abaw5"))
    ('frame', 'mfcc', 'egemaps', 'vggish', 'label', 'logmel', 'egemaps_functionals')
    """
    return tuple(dict.fromkeys(stem for name in feature_sets for stem in FeatureSet(name).files))

# A JSON/YAML config file read when no --config is given (IDE users: put its path here); the
# environment variable wins over it. Empty: none.
DEFAULT_CONFIG_FILE = ""
CONFIG_FILE_ENV = "ABAW2_LFAF_CONFIG"


class Recipe(enum.StrEnum):
    """Whose arithmetic a run follows (``recipe`` config key; README: table of deviations)."""

    AUTHORS = "authors"  # the authors' code, number for number (the default)
    CORRECTED = "corrected"  # our corrections of the behaviours in RECIPE_SETTINGS


# Every behaviour on which the recipes differ: config key -> value under each recipe. These keys
# default to None ("follow the recipe"); a value given in a config file or on the command line wins.
# ``resolve_recipe`` fills them in, and run folders record the resolved values.
RECIPE_SETTINGS: dict[str, dict[Recipe, Any]] = {
    # frozen backbone BatchNorm in model.train(): batch statistics, running statistics updated (the
    # authors' model.train() on the whole model) or kept in eval mode with the pretrained statistics
    "frozen_batchnorm": {Recipe.AUTHORS: "train", Recipe.CORRECTED: "eval"},
    # padded frames of short windows: through the backbone, its BatchNorm statistics and the loss
    # (audio padding z-scored like data: -mean/std), or masked out of all three
    "padded_frames": {Recipe.AUTHORS: "model", Recipe.CORRECTED: "masked"},
    # training loss: the authors' per-window 1 - CCC (covariance / N, variances / (N - 1), all frames)
    # or the population CCC over valid frames
    "ccc_loss": {Recipe.AUTHORS: "authors", Recipe.CORRECTED: "population"},
    # training windows: shuffled once with the seed and read in that order every epoch, or reshuffled
    "epoch_order": {Recipe.AUTHORS: "fixed", Recipe.CORRECTED: "reshuffle"},
    # statistics that z-score test trials: the test trials' own (Target_Set) or the fold's validation ones
    "test_statistics": {Recipe.AUTHORS: "Target_Set", Recipe.CORRECTED: "Validation_Set"},
    # the authors' fusion defect: follower queries/values computed from the follower keys
    "fusion_quirk": {Recipe.AUTHORS: True, Recipe.CORRECTED: False},
    # third release group of ir_se: the authors' parameter slice (last 2 units of stage 3) or 3 units as for ir
    "release_groups": {Recipe.AUTHORS: "authors", Recipe.CORRECTED: "three_units"},
    # early stopping counts epochs after min_num_epochs (epoch > min, the authors') or from it (>=)
    "min_epochs_inclusive": {Recipe.AUTHORS: False, Recipe.CORRECTED: True},
    # CCC-centering fold fusion: the authors' agreement weights (sample variances, negative agreements
    # kept) or population CCC with negative agreements clipped to 0
    "fold_fusion": {Recipe.AUTHORS: "authors", Recipe.CORRECTED: "clipped"},
}


@dataclass(frozen=True)
class DemoConfig:
    """A small database in the exact Aff-Wild2 layout whose faces and sounds carry the labels."""

    demo_seed: int = 0
    demo_fps: float = 5.0  # frames per second of every demo video (labels vary slowly; IR-50 is costly on CPU)
    demo_n_train_videos: int = 6  # one of them has two people (_left/_right trials)
    demo_n_validation_videos: int = 2
    demo_n_test_videos: int = 2
    demo_min_seconds: float = 16.0
    demo_max_seconds: float = 24.0
    demo_video_size: int = 160  # square video side, pixels
    demo_face_size: int = 112  # cropped_aligned jpg side, pixels (as Aff-Wild2)
    demo_missing_face_rate: float = 0.03  # fraction of frames whose jpg is missing
    demo_unlabeled_rate: float = 0.05  # fraction of frames annotated -5
    demo_sample_rate: int = 16000  # Hz of the generated audio track
    demo_layout: str = "abaw2"  # abaw2: the paper's layout; abaw3: the later releases' (base/preprocessing/demo.py)


@dataclass(frozen=True)
class FeatureConfig:
    """Preprocessing settings (SPEC §2, §3)."""

    frame_size: int = 48  # side of the stored face crops, pixels
    sample_rate: int = 16000  # Hz of the extracted wav
    opensmile_hop_s: float = 0.01  # openSMILE frame step
    vggish_batch_size: int = 64  # patches per VGGish forward pass (bounds memory; 256 costs +500 MiB, no faster)
    vggish_checkpoint: str = ""  # vggish_model.ckpt of the AudioSet release, or the authors' vggish.pth
    vggish_pca_params: str = ""  # vggish_pca_params.npz (kept for completeness; embedding is pre-PCA)
    vggish_engine: str = "tf"  # tf: the slim graph in TensorFlow (the authors'); torch: vggish/network.py (CPU or GPU)
    jobs: int = 1  # worker processes over videos
    max_label_frame_mismatch: float = 0.1  # tolerated |labels - video frames| / video frames
    openface_bin: str = ""  # OpenFace FeatureExtraction binary (optional)
    openface_output: str = ""  # folder of existing OpenFace CSVs (optional)
    database_path: str = ""  # raw Aff-Wild2 database root (preprocessing.py --database)
    annotations: str = ""  # VA annotation folder holding Train_Set/ and Validation_Set/ (empty: found in the database)
    video_dirs: tuple[str, ...] = ()  # folders holding the videos (empty: the whole database, recursively)
    test_list: str = ""  # the organisers' list of test trial names, one per line (empty: unannotated folders)
    vggish_device: str = "cpu"  # cpu: TensorFlow sees no GPU; gpu: VGGish may use the GPUs (memory grown as needed)
    features: tuple[str, ...] = ("abaw2",)  # feature sets to write: abaw2 (the paper's) and/or abaw5 (FeatureSet)


@dataclass(frozen=True)
class ModelConfig:
    """The 2d1d model and the leader-follower attentive fusion (SPEC §4)."""

    model_name: str = "2d1d"
    modality: tuple[str, ...] = ("frame", "vggish", "mfcc")
    emotion: str = "valence"  # valence, arousal or both
    head: str = "sh"  # sh: single-headed; mh: multi-headed (both outputs, chosen one x10)
    backbone_mode: str = "ir"  # ir or ir_se
    backbone_checkpoint: str = ""  # res50_ir_0.887.pth or a bare backbone state dict
    random_backbone: bool = False  # allow random backbone weights when no checkpoint is given
    crop_size: int = 40  # input side of the backbone
    cnn1d_embedding_dim: int = 512
    cnn1d_channels: tuple[int, ...] = (128, 128, 128, 128)
    aural_channels: tuple[int, ...] = (32, 32, 32, 32)
    cnn1d_kernel_size: int = 5
    cnn1d_dropout: float = 0.1
    fusion_dim: int = 32  # key/query/value width of the attentive fusion
    fusion_quirk: bool | None = None  # the authors' query/value-from-key defect (None: from the recipe)
    backbone_chunk_size: int = 512  # frames per backbone pass (bounds memory on long windows)
    audio_backbone_checkpoint: str = ""  # lfan/can: the authors' vggish.pth (or vggish_model.ckpt)
    audio_chunk_size: int = 256  # lfan/can: log-mel patches per pass of VGGish's frozen layers (bounds memory)
    follower_mode: str = "fusion"  # how flm/fau enter: as fusion followers
    frozen_batchnorm: str | None = None  # train or eval (None: from the recipe, RECIPE_SETTINGS)
    release_groups: str | None = None  # authors or three_units (None: from the recipe)

    @property
    def output_dim(self) -> int:
        return 2 if (self.emotion == "both" or self.head == "mh") else 1


@dataclass(frozen=True)
class TrainConfig:
    """The authors' recipe (SPEC §5) and the bookkeeping of a run."""

    dataset_path: str = ""
    save_path: str = "runs"
    experiment_name: str = "ABAW2"
    stamp: str = "test"
    fold: tuple[int, ...] = (0,)
    window_length: int = 300
    hop_length: int = 200
    batch_size: int = 8
    learning_rate: float = 1e-5
    min_learning_rate: float = 1e-6
    weight_decay: float = 1e-3
    num_epochs: int = 100
    min_num_epochs: int = 0
    early_stopping: int = 20
    patience: int = 5
    factor: float = 0.1
    gradual_release: bool = True
    release_count: int = 3
    load_best_at_each_epoch: bool = True
    time_delay: int = 0
    multi_head_weight: float = 10.0
    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda or cuda:N
    num_workers: int = -1  # DataLoader workers; -1 = auto: 0 on the CPU, from the CPU count on CUDA
    cpu_threads: int = 0  # torch CPU threads (the authors' -cpu N); 0 keeps torch's default
    resume: bool = False
    debug: int = 0  # number of trials to load per partition; 0 = all
    save_model: bool = True
    n_plot_trials: int = 3
    quiet: bool = False
    precision: str = "fp32"  # fp32, bf16 or fp16 (autocast; fp16 only on CUDA, with a gradient scaler)
    channels_last: bool = False  # channels_last memory format for the IR-50 backbone
    recipe: str = "authors"  # authors (their arithmetic) or corrected (our corrections); see RECIPE_SETTINGS
    padded_frames: str | None = None  # model or masked (None: from the recipe)
    ccc_loss: str | None = None  # authors or population (None: from the recipe)
    epoch_order: str | None = None  # fixed or reshuffle (None: from the recipe)
    test_statistics: str | None = None  # Target_Set or Validation_Set (None: from the recipe)
    min_epochs_inclusive: bool | None = None  # None: from the recipe
    fold_fusion: str | None = None  # authors or clipped (None: from the recipe)
    tensorboard: bool = False  # also write per-epoch scalars to <run folder>/tensorboard/ (needs tensorboard)
    deterministic: bool = True  # cuDNN deterministic kernels; False turns on cudnn.benchmark (faster, not repeatable)
    batchnorm_warmup_batches: int = 0  # training batches that set a random backbone's BatchNorm statistics first


@dataclass(frozen=True)
class PredictConfig:
    """Where ``predict.py`` writes (its runs default to ``save_path``, its dataset to ``dataset_path``)."""

    submission_path: str = "submission"  # folder of the test-set submission (one <trial>.txt per test trial)


@dataclass(frozen=True)
class Config:
    demo: DemoConfig = field(default_factory=DemoConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)


SECTIONS = tuple(f.name for f in dataclasses.fields(Config))

FIELD_HELP: dict[str, str] = {
    # demo
    "demo_seed": "seed of the demo database (everything in it is deterministic from it)",
    "demo_fps": "frames per second of the demo videos",
    "demo_n_train_videos": "demo training videos (one has two people: _left/_right trials)",
    "demo_n_validation_videos": "demo validation videos",
    "demo_n_test_videos": "demo test videos (no annotations)",
    "demo_min_seconds": "shortest demo video, seconds",
    "demo_max_seconds": "longest demo video, seconds",
    "demo_video_size": "side of a demo video (per person), pixels",
    "demo_face_size": "side of the cropped_aligned jpgs, pixels",
    "demo_missing_face_rate": "fraction of demo frames whose face jpg is missing",
    "demo_unlabeled_rate": "fraction of demo annotation rows marked -5",
    "demo_sample_rate": "sample rate of the demo audio tracks, Hz",
    "demo_layout": "abaw2 (annotations/VA_Set, raw_video/, Test_Set/) or abaw3 (the later releases: "
                   "'6th ABAW Annotations/VA_Estimation_Challenge', videos in batch1/ batch2/, other challenges' "
                   "cropped_aligned folders, a test list file)",
    # features
    "frame_size": "side of the stored face crops (frame.npy), pixels",
    "sample_rate": "sample rate of the extracted wav, Hz",
    "opensmile_hop_s": "openSMILE frame step, seconds",
    "vggish_batch_size": "VGGish patches per forward pass (bounds memory)",
    "vggish_checkpoint": "vggish_model.ckpt of the AudioSet VGGish release, or the same weights in PyTorch "
                         "layout (the authors' vggish.pth, sucv/ABAW3); required except for the demo",
    "vggish_pca_params": "vggish_pca_params.npz of the release (checked; the stored embedding is pre-PCA)",
    "vggish_engine": "tf: VGGish as the authors ran it (TensorFlow, slim graph); torch: the same network in torch, "
                     "on the GPU with --vggish-device gpu (vggish.npy equal to tf's within 1e-4)",
    "jobs": "worker processes over videos",
    "max_label_frame_mismatch": "largest tolerated |annotation rows - video frames| / video frames",
    "openface_bin": "OpenFace FeatureExtraction binary: adds landmark.npy and au.npy (optional, not bundled)",
    "openface_output": "folder of existing OpenFace CSVs named <trial>.csv (instead of --openface-bin)",
    "database_path": "raw database root: annotations, cropped_aligned/ and the videos (in any subfolders)",
    "annotations": "VA annotation folder with Train_Set/ and Validation_Set/ (default: annotations/VA_Set or "
                   "<N>th ABAW Annotations/VA_Estimation_Challenge found in the database)",
    "video_dirs": "folders holding the videos, searched recursively (default: the database root, "
                  "cropped_aligned/ skipped)",
    "test_list": "the organisers' test-set list (e.g. Valence_Arousal_Estimation_Challenge_test_set_release.txt, "
                 "one trial name per line); default: cropped_aligned folders without a VA annotation",
    "features": "feature sets to write: abaw2 (frame mfcc egemaps vggish label: the paper's) and/or abaw5 (frame "
                "logmel egemaps_functionals label: the authors' second generation); abaw5 alone runs no VGGish",
    "vggish_device": "cpu: hide the GPUs from TensorFlow (embeddings as the CPU build computes them, no GPU memory "
                     "taken); gpu: let VGGish use them (memory allocated as needed; with --vggish-engine torch: the "
                     "first CUDA GPU, an error when torch sees none)",
    # model
    "model_name": "model family: 2d1d (ABAW2: ResNet-50 frames + 1D TCN; one modality: unimodal, more: fusion), "
                  "lfan or can (ABAW5: IR-50 frames and VGGish log-mel inside the model, modalities frame "
                  "logmel egemaps_functionals)",
    "modality": "inputs: frame vggish mfcc egemaps flm fau (2d1d: frame leads the fusion), frame logmel "
                "egemaps_functionals (lfan/can: the first leads)",
    "emotion": "valence, arousal or both (both: two outputs)",
    "head": "sh: single-headed; mh: both outputs, the chosen emotion's loss weighted x10",
    "backbone_mode": "ir or ir_se (squeeze-excitation) IR-50 backbone",
    "backbone_checkpoint": "res50_ir_0.887.pth (the authors' FER+ fine-tuned IR-50) or a backbone state dict",
    "random_backbone": "allow random backbone weights when no checkpoint is given",
    "crop_size": "backbone input side: random (train) / centre (eval) crop of the 48x48 frames",
    "cnn1d_embedding_dim": "width of the visual embedding fed to the visual TCN",
    "cnn1d_channels": "visual TCN widths, one per level (dilations 1, 2, 4, ...)",
    "aural_channels": "TCN widths of each follower modality",
    "cnn1d_kernel_size": "TCN kernel size",
    "cnn1d_dropout": "TCN dropout",
    "fusion_dim": "key/query/value width of the attentive fusion",
    "fusion_quirk": "the authors' defect: follower queries/values computed from their keys",
    "backbone_chunk_size": "frames per backbone pass (bounds memory on long windows)",
    "audio_backbone_checkpoint": "lfan/can: VGGish weights, the authors' vggish.pth (sucv/ABAW3) or the AudioSet "
                                 "vggish_model.ckpt; required unless --random-backbone",
    "audio_chunk_size": "lfan/can: log-mel patches per pass of VGGish's frozen layers (exact; bounds memory)",
    "follower_mode": "how non-leading modalities enter the model",
    "frozen_batchnorm": "frozen backbone BatchNorm while training: train (batch statistics, the authors') or eval",
    "release_groups": "gradual-release groups: authors (ir_se's third group is 2 units) or three_units",
    # train
    "dataset_path": "preprocessed dataset (dataset_info.pkl, mean_std_dict.pkl, npy_data/)",
    "save_path": "folder of the run folders",
    "experiment_name": "first part of every run folder name",
    "stamp": "last part of every run folder name (tell runs apart)",
    "fold": "fold(s) 0-5 to run in sequence (fold 0: the original train/validation split)",
    "window_length": "frames per training window",
    "hop_length": "frames between window starts",
    "batch_size": "windows per batch",
    "learning_rate": "Adam learning rate (also after each backbone release)",
    "min_learning_rate": "below it, the next backbone group is released (or training stops)",
    "weight_decay": "Adam weight decay",
    "num_epochs": "most epochs",
    "min_num_epochs": "epochs before early stopping may count",
    "early_stopping": "stop after this many epochs without a better validation CCC",
    "patience": "ReduceLROnPlateau patience, epochs",
    "factor": "ReduceLROnPlateau factor",
    "gradual_release": "release backbone groups gradually (output layer, stage 4, end of stage 3)",
    "release_count": "how many backbone groups may be released",
    "load_best_at_each_epoch": "reload the best weights after an epoch that did not improve",
    "time_delay": "shift labels by this many frames (the last is repeated)",
    "multi_head_weight": "loss weight of the chosen emotion with --head mh",
    "seed": "random seed (python, numpy, torch, shuffling, crops)",
    "device": "auto, cpu, cuda or cuda:N",
    "num_workers": "DataLoader worker processes; -1: auto (none on the CPU; on CUDA the CPUs per rank minus one, "
                   "at most 8); 0: load in the training process",
    "cpu_threads": "torch CPU threads (the authors' -cpu); 0 keeps torch's default",
    "resume": "continue from the run folder's checkpoint.pt",
    "debug": "load only this many trials per partition (0: all)",
    "save_model": "write best.pt",
    "n_plot_trials": "validation trials drawn in traces.png",
    "quiet": "warnings only, no progress bars",
    "precision": "fp32, bf16 or fp16 autocast for the model (fp16 only on CUDA, with a gradient scaler)",
    "channels_last": "store the IR-50 backbone in channels_last memory format (faster convolutions on GPUs)",
    "recipe": "authors: the authors' arithmetic, number for number; corrected: our corrections (README table)",
    "padded_frames": "padding of short windows: model (through backbone and loss, the authors') or masked",
    "ccc_loss": "training loss: authors (per-window CCC, cov/N, var/(N-1)) or population (masked, /N)",
    "epoch_order": "training windows: fixed (shuffled once with the seed, the authors') or reshuffle each epoch",
    "test_statistics": "z-scoring of test trials: Target_Set (the authors') or Validation_Set (the fold's)",
    "min_epochs_inclusive": "early stopping counts from epoch min_num_epochs (1) or after it (0, the authors')",
    "fold_fusion": "CCC-centering weights: authors (sample variances, negatives kept) or clipped (population, >= 0)",
    "tensorboard": "write per-epoch scalars (loss, validation CCC/PCC/RMSE, lr, released groups) to "
                   "<run folder>/tensorboard/ (pip install tensorboard)",
    # predict
    "submission_path": "folder where predict.py test writes the submission",
    "batchnorm_warmup_batches": "before epoch 0, this many training batches set the backbone's BatchNorm running "
                                "statistics (a random backbone's describe nothing; the demo uses it; 0: off)",
    "deterministic": "cuDNN deterministic kernels, autotuner off (repeatable GPU runs); 0: cudnn.benchmark on",
}



def demo_overrides() -> dict[str, Any]:
    """The small recipe that trains the demo on 2 CPU cores in minutes (the paper's is for GPUs)."""
    return {
        "train": {
            "learning_rate": 1e-3,
            "min_learning_rate": 1e-5,
            "num_epochs": 6,
            "early_stopping": 6,
            "patience": 2,
            "batch_size": 2,
            "window_length": 100,
            "hop_length": 100,
            "stamp": "demo",
            "batchnorm_warmup_batches": 8,  # the demo's backbone is random: give it its data's statistics
        },
        "model": {"random_backbone": True},
    }


# ----------------------------------------------------------------------------- type checking


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _optional_inner(annotation: Any) -> Any:
    """``X`` of ``X | None`` (the only union configs use: None means "from the recipe")."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if len(args) != 1 or type(None) not in typing.get_args(annotation):
        raise TypeError(f"only X | None unions are used in configs, got {annotation!r}")
    return args[0]


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Check ``value`` against ``annotation``; lists become tuples; ints are accepted as floats."""
    origin = typing.get_origin(annotation)
    if origin is tuple:
        (item_type, _ellipsis) = typing.get_args(annotation)
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            value = [value]
        return tuple(_coerce(key, item, item_type) for item in value)
    if origin in (typing.Union, types.UnionType):
        inner = _optional_inner(annotation)
        return None if value is None else _coerce(key, value, inner)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):  # the authors' flags are 0/1
            return bool(value)
        raise UserError(f"config key '{key}' must be true/false (or 0/1), got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise UserError(f"config key '{key}' must be a number, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise UserError(f"config key '{key}' must be an integer, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise UserError(f"config key '{key}' must be a string, got {value!r}")
    raise TypeError(f"unsupported config annotation {annotation!r}")


def replace_section(section: Any, overrides: Mapping[str, Any], prefix: str = "") -> Any:
    """A copy of one section dataclass with ``overrides`` applied after checking keys and types."""
    hints = _field_types(type(section))
    changes = {}
    for key, value in overrides.items():
        if key not in hints:
            raise UserError(f"unknown config key '{prefix}{key}'")
        changes[key] = _coerce(prefix + key, value, hints[key])
    return dataclasses.replace(section, **changes)


FLAT_KEYS: dict[str, str] = {}  # field name -> section name


def _build_flat_keys() -> None:
    for section in SECTIONS:
        cls = _field_types(Config)[section]
        for f in dataclasses.fields(cls):
            assert f.name not in FLAT_KEYS, f"duplicate config field {f.name}"
            FLAT_KEYS[f.name] = section


_build_flat_keys()


def apply_overrides(config: Config, overrides: Mapping[str, Any]) -> Config:
    """Apply nested (``{"train": {...}}``) or flat (``{"batch_size": 4}``) overrides."""
    per_section: dict[str, dict[str, Any]] = {}
    for key, value in overrides.items():
        if key in SECTIONS and (isinstance(value, Mapping) or key not in FLAT_KEYS):  # 'features': both
            if not isinstance(value, Mapping):
                raise UserError(f"config section '{key}' must be a mapping of keys to values")
            per_section.setdefault(key, {}).update(value)
        elif key in FLAT_KEYS:
            per_section.setdefault(FLAT_KEYS[key], {})[key] = value
        else:
            raise UserError(f"unknown config key '{key}'")
    changes = {
        section: replace_section(getattr(config, section), values, prefix=f"{section}.")
        for section, values in per_section.items()
    }
    return validate(dataclasses.replace(config, **changes))


def validate(config: Config) -> Config:
    """Cross-field checks that a type alone cannot express."""
    m, t = config.model, config.train
    model_names = [name.value for name in ModelName]
    if m.model_name.lower() not in model_names:
        raise UserError(f"config key 'model_name' must be {', '.join(model_names[:-1])} or {model_names[-1]}, "
                        f"got '{m.model_name}'")
    if m.model_name != m.model_name.lower():  # the authors spelled -model_name LFAN / CAN
        config = dataclasses.replace(config, model=dataclasses.replace(m, model_name=m.model_name.lower()))
        m = config.model
    if m.audio_chunk_size <= 0:
        raise UserError(f"config key 'audio_chunk_size' must be positive, got {m.audio_chunk_size}")
    valid_modalities = {mod.value for mod in Modality}
    for name in m.modality:
        if name not in valid_modalities:
            raise UserError(
                f"config key 'modality': unknown modality '{name}' "
                f"(choose from {', '.join(sorted(valid_modalities))})"
            )
    if not m.modality:
        raise UserError("config key 'modality' needs at least one modality")
    if m.emotion not in (*EMOTIONS, "both"):
        raise UserError(f"config key 'emotion' must be valence, arousal or both, got '{m.emotion}'")
    if m.head not in ("sh", "mh"):
        raise UserError(f"config key 'head' must be sh or mh, got '{m.head}'")
    if m.backbone_mode not in ("ir", "ir_se"):
        raise UserError(f"config key 'backbone_mode' must be ir or ir_se, got '{m.backbone_mode}'")
    for fold in t.fold:
        if not 0 <= fold <= 5:
            raise UserError(f"config key 'fold': fold {fold} is outside 0-5")
    if t.hop_length <= 0 or t.window_length <= 0 or t.hop_length > t.window_length:
        raise UserError("config keys 'window_length'/'hop_length' need 0 < hop <= window")
    if t.batch_size <= 0:
        raise UserError("config key 'batch_size' must be positive")
    if t.batchnorm_warmup_batches < 0:
        raise UserError("config key 'batchnorm_warmup_batches' must be 0 or more")
    recipes = [r.value for r in Recipe]
    if t.recipe not in recipes:
        raise UserError(f"config key 'recipe' must be {' or '.join(recipes)}, got '{t.recipe}'")
    for key, values in RECIPE_SETTINGS.items():
        value = getattr(config.model if key in MODEL_RECIPE_KEYS else t, key)
        choices = list(dict.fromkeys(values.values()))
        if value is not None and value not in choices:
            shown = " or ".join(map(str, choices))
            raise UserError(f"config key '{key}' must be {shown} (or unset: from the recipe), got {value!r}")
    if t.num_workers < -1:
        raise UserError(f"config key 'num_workers' must be -1 (auto), 0 or more, got {t.num_workers}")
    if config.features.vggish_engine not in VGGISH_ENGINES:
        raise UserError(f"config key 'vggish_engine' must be {' or '.join(VGGISH_ENGINES)}, got "
                        f"'{config.features.vggish_engine}'")
    if config.features.vggish_device not in ("cpu", "gpu"):
        raise UserError(f"config key 'vggish_device' must be cpu or gpu, got '{config.features.vggish_device}'")
    feature_sets = [s.value for s in FeatureSet]
    for name in config.features.features:
        if name not in feature_sets:
            raise UserError(f"config key 'features' must list {' and/or '.join(feature_sets)}, got '{name}'")
    if not config.features.features:
        raise UserError(f"config key 'features' needs at least one of {', '.join(feature_sets)}")
    return config


MODEL_RECIPE_KEYS = frozenset(f.name for f in dataclasses.fields(ModelConfig)) & set(RECIPE_SETTINGS)


def resolve_model_recipe(model: ModelConfig, recipe: str = Recipe.AUTHORS.value) -> ModelConfig:
    """``model`` with every recipe-dependent key left unset filled in from ``recipe``."""
    chosen = Recipe(recipe)
    fills = {key: RECIPE_SETTINGS[key][chosen] for key in MODEL_RECIPE_KEYS if getattr(model, key) is None}
    return dataclasses.replace(model, **fills) if fills else model


def resolve_recipe(config: Config) -> Config:
    """``config`` with every recipe-dependent key left unset (None) filled in from ``recipe``.

    Keys given explicitly keep their values. Idempotent; run folders store the result.
    """
    chosen = Recipe(config.train.recipe)
    train_fills = {
        key: values[chosen] for key, values in RECIPE_SETTINGS.items()
        if key not in MODEL_RECIPE_KEYS and getattr(config.train, key) is None
    }
    return dataclasses.replace(
        config,
        model=resolve_model_recipe(config.model, chosen.value),
        train=dataclasses.replace(config.train, **train_fills) if train_fills else config.train,
    )


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON or YAML config file into a dict of overrides."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} does not exist")
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
    except Exception as exc:  # noqa: BLE001 - any parse error is the user's file
        raise UserError(f"config file {path} could not be parsed: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of keys to values")
    return data


def to_dict(config: Config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def from_dict(data: Mapping[str, Any]) -> Config:
    """Rebuild a Config from ``to_dict`` output (e.g. one stored in a checkpoint), recipe resolved.

    A stored config without a ``recipe`` key predates the recipes: its run behaved as ``corrected``.
    """
    train = data.get("train")
    if isinstance(train, Mapping) and "recipe" not in train:
        data = {**data, "train": {**train, "recipe": Recipe.CORRECTED.value}}
    return resolve_recipe(apply_overrides(Config(), data))


def save_config(config: Config, run_dir: str | Path, name: str = "config.json") -> Path:
    """Write the resolved config into ``run_dir`` (atomically) and return its path."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    target = run_dir / name
    atomic.write_text(target, json.dumps(to_dict(config), indent=2, sort_keys=True) + "\n")
    return target


# ----------------------------------------------------------------------------- command line


def _kebab(name: str) -> str:
    return name.replace("_", "-")


def add_config_arguments(
    parser: argparse.ArgumentParser,
    sections: tuple[str, ...] = SECTIONS,
    aliases: Mapping[str, tuple[str, ...]] | None = None,
) -> None:
    """Add ``--kebab-case`` flags (and single-dash aliases) for every field of ``sections``.

    Flags default to ``argparse.SUPPRESS`` so that only what the user typed overrides the config.
    """
    aliases = aliases or {}
    parser.add_argument(
        "--config", "-config", dest="config_file", default=None, metavar="FILE",
        help="JSON or YAML file of config overrides (the command line overrides it)",
    )
    defaults = Config()
    for section in sections:
        group = parser.add_argument_group(f"{section} settings")
        section_obj = getattr(defaults, section)
        hints = _field_types(type(section_obj))
        for f in dataclasses.fields(section_obj):
            annotation = hints[f.name]
            if typing.get_origin(annotation) in (typing.Union, types.UnionType):
                annotation = _optional_inner(annotation)
            names = [f"--{_kebab(f.name)}", *aliases.get(f.name, ())]
            default = getattr(section_obj, f.name)
            kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS}
            if typing.get_origin(annotation) is tuple:
                (item_type,) = typing.get_args(annotation)[:1]
                kwargs.update(nargs="+", type=item_type, metavar=f.name.upper())
                shown = " ".join(map(str, default))
            elif annotation is bool:
                kwargs.update(type=_parse_bool, metavar="0|1")
                shown = str(int(default)) if default is not None else "from --recipe"
            else:
                kwargs.update(type=annotation, metavar=f.name.upper())
                shown = "from --recipe" if default is None else str(default) if default != "" else "''"
            description = FIELD_HELP.get(f.name, "")
            group.add_argument(*names, help=f"{description} (default: {shown})".strip(), **kwargs)


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected 0/1 or true/false, got {text!r}")


def default_config_file(environ: Mapping[str, str] | None = None) -> str:
    """The config file read when no ``--config`` is given: ``$ABAW2_LFAF_CONFIG``, else ``DEFAULT_CONFIG_FILE``."""
    environ = os.environ if environ is None else environ
    return environ.get(CONFIG_FILE_ENV, "").strip() or DEFAULT_CONFIG_FILE


def load_config(config_file: str | None = None) -> Config:
    """Defaults <- ``config_file`` (else ``default_config_file()``): what a script without flags runs with."""
    return resolve(argparse.Namespace(config_file=config_file))


def resolve(args: argparse.Namespace, base: Config | None = None,
            extra: Mapping[str, Any] | None = None) -> Config:
    """Defaults (or ``base``) <- ``extra`` <- the config file (``--config``, else ``default_config_file()``) <- flags."""
    config = base or Config()
    if extra:
        config = apply_overrides(config, extra)
    config_file = getattr(args, "config_file", None) or default_config_file()
    if config_file:
        config = apply_overrides(config, load_config_file(config_file))
    flags = {k: v for k, v in vars(args).items() if k in FLAT_KEYS}
    return resolve_recipe(apply_overrides(config, flags))
