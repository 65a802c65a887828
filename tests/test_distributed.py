"""DistributedDataParallel on the CPU (gloo, 2 processes) against single-process runs of the same data:
sharding, gathered evaluation, a DDP epoch, rank-0-only files, a real ``torchrun`` launch, and how the
ranks leave (together on success; in seconds, one line each, when one fails)."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import main
from base.data.dataset import make_loader
from base.errors import EnvironmentFailure, UserError
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
from base.training.rank_exit import (
    FAIL_RANK_ENV,
    distributed_run,
    exit_process,
    fail_if_asked,
    lost_peer_message,
)
from base.training.run_folder import read_csv
from configs import Config
from tests.distributed_helpers import (
    CCC_LINE,
    WORLD_SIZE,
    audio_args,
    build_trainer,
    evaluate_worker,
    failure_problems,
    fit_worker,
    free_port,
    launch,
    main_worker,
    make_ddp_dataset,
    resume_worker,
    success_problems,
    threads_worker,
    torchrun_command,
)
from tests.processed_helpers import make_processed_dataset

# tiny models run fastest on one thread (and do not suffer from a busy machine)
pytestmark = pytest.mark.usefixtures("one_torch_thread")

TORCHRUN_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """5 training trials of 20 frames (windows of 8, hop 4: 20 windows) and 3 validation trials."""
    return make_ddp_dataset(tmp_path_factory.mktemp("ddp") / "data")


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
    result = launch(torchrun_command(dataset, tmp_path), TORCHRUN_TIMEOUT_S)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert result.stdout.count(CCC_LINE) == 1, result.stdout
    history, _ = history_and_state(tmp_path)
    assert len(history) == 1 and math.isfinite(float(history[0]["train_loss"]))


# ----------------------------------------------------------------------------- leaving the process group (issue 22)


@pytest.mark.slow
def test_torchrun_exits_0_on_every_rank_without_an_abort(dataset, tmp_path):
    # Issue 22: now and then rank 1 aborted at exit ("terminate called without an active exception").
    # Every rank's own log is checked here; benchmarks/ddp_stress.py repeats the same launch many times
    # under load (30 of 30 ok), which a suite that must stay fast cannot afford.
    for run in range(1):
        outcome = launch(torchrun_command(dataset, tmp_path / f"runs{run}", tmp_path / f"logs{run}"),
                         TORCHRUN_TIMEOUT_S, log_dir=tmp_path / f"logs{run}")
        assert not success_problems(outcome), (run, success_problems(outcome), outcome.stderr[-3000:])


@pytest.mark.slow
@pytest.mark.parametrize("fail_rank", [0, 1])
def test_a_failing_rank_ends_the_run_non_zero_in_seconds_with_one_line_per_rank(dataset, tmp_path, fail_rank):
    logs = tmp_path / "logs"
    outcome = launch(torchrun_command(dataset, tmp_path / "runs", logs), TORCHRUN_TIMEOUT_S,
                     {FAIL_RANK_ENV: str(fail_rank)}, log_dir=logs)
    assert not failure_problems(outcome, limit_s=60), (failure_problems(outcome, 60), outcome.stderr[-3000:])
    assert outcome.rank_stderr[fail_rank].startswith(f"error: rank {fail_rank} failed on purpose")
    other = outcome.rank_stderr[1 - fail_rank]
    assert other.startswith((f"error: rank {1 - fail_rank}: another rank stopped", f"error: rank {1 - fail_rank}: "
                             "stopped by SIGTERM")), other


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads thread names from /proc")
def test_leaving_together_ends_gloo_threads_before_the_interpreter_shuts_down(tmp_path):
    # The cause of issue 22: DDP imported torch.distributed.nn after the process group existed, and its
    # functions' group=group.WORLD defaults kept gloo's threads alive past destroy_process_group.
    run_ranks(threads_worker, str(tmp_path))
    for rank in range(WORLD_SIZE):
        with open(tmp_path / f"threads{rank}.pkl", "rb") as handle:
            threads = pickle.load(handle)
        assert any("gloo" in name for name in threads["during"]), threads  # the probe sees gloo's threads
        assert not any("gloo" in name for name in threads["after"]), threads


def test_a_lost_peer_becomes_one_line_and_other_errors_stay_as_they_are():
    closed = RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer "
                          "[127.0.0.1]:9892. This is typically caused by a remote worker crashing.\nframe #0: ...")
    assert lost_peer_message(0, closed) == (
        "rank 0: another rank stopped or did not answer (Connection closed by peer [127.0.0.1]:9892); its own "
        "error line says why: fix that, then rerun the same command with --resume 1")
    barrier = RuntimeError("Rank 1 failed to pass monitoredBarrier in 600000 ms")
    assert "(Rank 1 failed to pass monitoredBarrier in 600000 ms)" in lost_peer_message(0, barrier)
    assert lost_peer_message(1, dist.DistBackendError("Gloo says no")).startswith("rank 1: another rank stopped "
                                                                                  "or did not answer (Gloo says no)")
    assert lost_peer_message(0, ValueError("a bug")) is None


def test_the_failure_hook_fires_only_on_the_named_rank():
    fail_if_asked(0, {})
    fail_if_asked(0, {FAIL_RANK_ENV: "1"})
    with pytest.raises(EnvironmentFailure, match=f"rank 1 failed on purpose \\({FAIL_RANK_ENV}=1"):
        fail_if_asked(1, {FAIL_RANK_ENV: "1"})


def test_a_single_process_run_leaves_nothing_and_exits_normally():
    with distributed_run(DistributedContext()):
        pass
    with pytest.raises(ValueError, match="a bug"), distributed_run(DistributedContext()):
        raise ValueError("a bug")
    with pytest.raises(SystemExit) as exit_info:
        exit_process(2)
    assert exit_info.value.code == 2


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
