"""DistributedDataParallel on the CPU (gloo, 2 processes) against single-process runs of the same data:
sharding, gathered evaluation, a DDP epoch, rank-0-only files, and a real ``torchrun`` launch."""

from __future__ import annotations

import json
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

import main
from base.data.dataset import make_loader
from base.errors import UserError
from base.training.distributed import (
    DistributedContext,
    gather_window_pieces,
    init_distributed,
    rank_config,
    ranks_from_env,
    shard_indices,
    shuffled_order,
    sum_across_ranks,
)
from base.training.run_folder import read_csv
from configs import Config
from tests.distributed_helpers import (
    build_trainer,
    evaluate_worker,
    fit_worker,
    free_port,
    main_worker,
    resume_worker,
)
from tests.processed_helpers import make_processed_dataset

# tiny models run fastest on one thread (and do not suffer from a busy machine)
pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[1]
WORLD_SIZE = 2


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """5 training trials of 20 frames (windows of 8, hop 4: 20 windows) and 3 validation trials."""
    return make_processed_dataset(tmp_path_factory.mktemp("ddp") / "data", n_train=5, n_val=3, n_test=0,
                                  lengths=(20, 20, 20, 20, 20, 13, 9, 17), modalities=("mfcc", "vggish"))


def audio_args(dataset: Path, *extra: str) -> list[str]:
    return ["--dataset-path", str(dataset), "--modality", "vggish", "mfcc", "--window-length", "8",
            "--hop-length", "4", "--learning-rate", "1e-3", "--cnn1d-dropout", "0", "--quiet", *extra]


# ----------------------------------------------------------------------------- pure pieces


def test_shards_are_disjoint_strided_slices_of_one_seeded_permutation():
    assert shard_indices(5, 0, 2, shuffle=False).tolist() == [0, 2, 4]
    assert shard_indices(5, 1, 2, shuffle=False).tolist() == [1, 3, 0]  # padded with the first item
    assert shard_indices(5, 1, 2, shuffle=False, pad=False).tolist() == [1, 3]
    assert shard_indices(7, 2, 3, shuffle=False).tolist() == [2, 5, 1]
    permutation = shuffled_order(10, 3 + 4).tolist()
    assert sorted(permutation) == list(range(10)) and permutation != list(range(10))
    shards = [shard_indices(10, rank, 2, shuffle=True, seed=3, epoch=4).tolist() for rank in range(2)]
    assert shards == [permutation[0::2], permutation[1::2]]
    assert shard_indices(10, 0, 2, shuffle=True, seed=3, epoch=5).tolist() != shards[0]  # new epoch, new order
    assert sorted(shards[0] + shards[1]) == list(range(10))
    with pytest.raises(ValueError, match="rank 2 outside a world of 2"):
        shard_indices(4, 2, 2, shuffle=False)


def test_one_rank_shuffles_exactly_like_the_single_process_loader():
    items = [{"index": np.array(i)} for i in range(23)]
    loader = make_loader(items, batch_size=4, shuffle=True, seed=5, epoch=2)
    delivered = torch.cat([batch["index"] for batch in loader]).tolist()
    assert shard_indices(23, 0, 1, shuffle=True, seed=5, epoch=2).tolist() == delivered


def test_torchrun_environment_is_read_and_checked():
    assert ranks_from_env({}) == (0, 1, 0)
    assert ranks_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == (3, 4, 1)
    with pytest.raises(UserError, match="inconsistent torchrun environment: RANK=4, WORLD_SIZE=4"):
        ranks_from_env({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(UserError, match="must be integers"):
        ranks_from_env({"WORLD_SIZE": "two"})
    context = init_distributed("cpu", environ={})
    assert not context.is_distributed and context.is_main and context.device == torch.device("cpu")


def test_single_process_helpers_change_nothing():
    context = DistributedContext()
    pieces = {1: [(4, 3, np.zeros((8, 1)), np.ones((8, 1)))]}
    assert gather_window_pieces(pieces, context) is pieces
    assert sum_across_ranks((2.0, 3.0), context) == (2.0, 3.0)
    config = Config()
    assert rank_config(config, context) is config
    assert rank_config(config, DistributedContext(rank=1, world_size=2)).train.quiet


# ----------------------------------------------------------------------------- 2 processes, gloo


def run_ranks(worker, *args) -> None:
    mp.spawn(worker, args=(WORLD_SIZE, free_port(), *args), nprocs=WORLD_SIZE, join=True)


@pytest.mark.slow
def test_gathered_evaluation_equals_the_single_process_one(dataset, tmp_path):
    config = main.parse_config(audio_args(dataset, "--emotion", "both", "--save-path", str(tmp_path / "runs")))
    torch.manual_seed(0)
    from model import build_model

    setup = tmp_path / "setup.pkl"
    with open(setup, "wb") as handle:
        pickle.dump({"config": config, "state": build_model(config.model).state_dict(),
                     "run_dir": str(tmp_path / "run")}, handle)
    trainer = build_trainer(str(setup))
    single = trainer.evaluate(trainer.train_data)

    run_ranks(evaluate_worker, str(setup), str(tmp_path))
    results = []
    for rank in range(WORLD_SIZE):
        with open(tmp_path / f"rank{rank}.pkl", "rb") as handle:
            results.append(pickle.load(handle))
    n_windows = 20
    assert [r["n_windows_here"] for r in results] == [n_windows // 2, n_windows // 2]  # each rank half
    for result in results:  # every rank holds the metrics of the whole partition
        assert result["predictions"].keys() == single.predictions.keys()
        for trial, prediction in single.predictions.items():
            np.testing.assert_allclose(result["predictions"][trial], prediction, rtol=0, atol=1e-6)
        for emotion in ("valence", "arousal"):
            assert result["metrics"][emotion] == pytest.approx(single.metrics[emotion], abs=1e-6)


def history_and_state(save_path: Path) -> tuple[list[dict[str, str]], dict[str, torch.Tensor]]:
    (run,) = [p for p in save_path.iterdir() if p.is_dir()]
    return read_csv(run / "history.csv"), torch.load(run / "checkpoint.pt", weights_only=True)["model"]


@pytest.mark.slow
def test_a_ddp_epoch_equals_one_process_with_the_doubled_batch_and_only_rank0_writes(dataset, tmp_path):
    # 20 windows: each rank takes 2 per batch from the same permutation, so the union of a step's two
    # shards is exactly the single-process batch of 4, and DDP's averaged gradient is its gradient.
    main.main([*audio_args(dataset, "--num-epochs", "2", "--batch-size", "4"), "--save-path", str(tmp_path / "one")])
    run_ranks(main_worker, audio_args(dataset, "--num-epochs", "2", "--batch-size", "2"), str(tmp_path))

    assert not (tmp_path / "rank1").exists(), "rank 1 wrote files"
    (run,) = [p for p in (tmp_path / "rank0").iterdir() if p.is_dir()]
    assert {"config.json", "history.csv", "checkpoint.pt", "best.pt", "metrics.json", "learning_curves.png",
            "traces.png"} <= {p.name for p in run.iterdir()}
    assert json.loads((run / "config.json").read_text())["train"]["batch_size"] == 2
    history_ddp, state_ddp = history_and_state(tmp_path / "rank0")
    history_one, state_one = history_and_state(tmp_path / "one")
    assert len(history_ddp) == 2
    for row_ddp, row_one in zip(history_ddp, history_one, strict=True):
        assert math.isfinite(float(row_ddp["train_loss"]))
        for key in ("train_loss", "valence_ccc", "valence_rmse", "score"):
            assert float(row_ddp[key]) == pytest.approx(float(row_one[key]), abs=1e-5), key
    for key, value in state_one.items():
        torch.testing.assert_close(state_ddp[key], value, atol=1e-5, rtol=0, msg=key)


@pytest.mark.slow
def test_torchrun_launches_main_py_and_only_rank0_prints(dataset, tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "main.py",
               *audio_args(dataset, "--num-epochs", "1", "--batch-size", "2", "--save-path", str(tmp_path),
                           "--cpu-threads", "1")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert result.stdout.count("validation CCC: valence=") == 1, result.stdout
    history, _ = history_and_state(tmp_path)
    assert len(history) == 1 and math.isfinite(float(history[0]["train_loss"]))


@pytest.mark.slow
def test_ranks_stay_in_sync_through_backbone_releases(tmp_path):
    # min lr above lr: a backbone group is released at every epoch, and DDP must re-wrap the model
    # so that the newly trainable parameters are averaged too.
    data = make_processed_dataset(tmp_path / "frames", n_train=5, n_val=1, n_test=0, lengths=4, modalities=("frame",))
    config = main.parse_config([
        "--dataset-path", str(data), "--save-path", str(tmp_path / "runs"), "--modality", "frame", "--random-backbone",
        "--window-length", "4", "--hop-length", "4", "--batch-size", "1", "--debug", "2", "--num-epochs", "2",
        "--learning-rate", "1e-3", "--min-learning-rate", "1e-2", "--quiet"])
    torch.manual_seed(0)
    from model import build_model

    setup = tmp_path / "setup.pkl"
    with open(setup, "wb") as handle:
        pickle.dump({"config": config, "state": build_model(config.model).state_dict(),
                     "run_dir": str(tmp_path / "run")}, handle)
    run_ranks(fit_worker, str(setup), str(tmp_path))
    results = []
    for rank in range(WORLD_SIZE):
        with open(tmp_path / f"fit{rank}.pkl", "rb") as handle:
            results.append(pickle.load(handle))
    assert [row["n_released"] for row in results[0]["history"]] == [1, 2]
    assert all(math.isfinite(row["train_loss"]) for row in results[0]["history"])
    stage4 = [key for key in results[0]["model"] if key.startswith("backbone.body.23.")]
    assert stage4
    for key, value in results[0]["model"].items():
        torch.testing.assert_close(results[1]["model"][key], value, atol=0, rtol=0, msg=key)


@pytest.mark.slow
def test_ranks_draw_their_own_dropout_and_a_killed_ddp_run_resumes_exactly_on_every_rank(dataset, tmp_path):
    # dropout 0.5: rank r seeds with seed + r, so its masks differ from rank 0's; the checkpoint holds
    # every rank's random states, so the run killed after epoch 0 and resumed ends where the straight
    # one ends, on every rank (a rank restored with rank 0's states would average other gradients).
    args = audio_args(dataset, "--batch-size", "2", "--cnn1d-dropout", "0.5")
    run_ranks(resume_worker, args, str(tmp_path))
    dropped = []
    for rank in range(WORLD_SIZE):
        with open(tmp_path / f"dropout{rank}.pkl", "rb") as handle:
            dropped.append(pickle.load(handle))
    assert len(dropped[0]) == 4 and all(mask.any() for mask in dropped[0])
    assert any(not torch.equal(a, b) for a, b in zip(dropped[0], dropped[1], strict=True))

    (straight_run,) = [p for p in (tmp_path / "straight").iterdir() if p.is_dir()]
    (resumed_run,) = [p for p in (tmp_path / "resumed").iterdir() if p.is_dir()]
    straight = torch.load(straight_run / "checkpoint.pt", weights_only=True)
    resumed = torch.load(resumed_run / "checkpoint.pt", weights_only=True)
    assert straight["state"]["next_epoch"] == resumed["state"]["next_epoch"] == 3
    for key, value in straight["model"].items():
        assert torch.equal(resumed["model"][key], value), key
    strip = [{k: v for k, v in row.items() if k != "seconds"} for row in straight["state"]["history"]]
    assert [{k: v for k, v in row.items() if k != "seconds"} for row in resumed["state"]["history"]] == strip
    assert len(straight["rank_rng"]) == WORLD_SIZE
    assert not torch.equal(straight["rank_rng"][0]["torch"], straight["rank_rng"][1]["torch"])
    for rank in range(WORLD_SIZE):
        for key in ("torch", "generator"):
            assert torch.equal(resumed["rank_rng"][rank][key], straight["rank_rng"][rank][key]), (rank, key)
        with open(tmp_path / f"rng{rank}.pkl", "rb") as handle:
            states = pickle.load(handle)
        assert torch.equal(states["resumed"]["torch"], states["straight"]["torch"]), rank
        assert states["resumed"]["python"] == states["straight"]["python"], rank
