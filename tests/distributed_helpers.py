"""Worker functions for the multi-process tests (they must be importable by spawned processes).

Each worker joins a gloo process group on the CPU through the same environment variables that
``torchrun`` sets (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``).
"""

from __future__ import annotations

import os
import pickle
import socket
from pathlib import Path

import torch


def free_port() -> int:
    """A TCP port nobody listens on right now (for MASTER_PORT)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def set_rank_environment(rank: int, world_size: int, port: int) -> None:
    """What ``torchrun --nproc_per_node world_size`` would put in the environment of ``rank``."""
    os.environ.update({
        "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size),
        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
    })


def evaluate_worker(rank: int, world_size: int, port: int, setup_path: str, out_dir: str) -> None:
    """Evaluate given weights on a partition with ``world_size`` ranks; each rank pickles its result."""
    from base.training.distributed import init_distributed, shutdown_distributed

    torch.set_num_threads(1)
    set_rank_environment(rank, world_size, port)
    context = init_distributed("cpu")
    try:
        trainer = build_trainer(setup_path, context)
        evaluation = trainer.evaluate(trainer.train_data)
        with open(Path(out_dir) / f"rank{rank}.pkl", "wb") as handle:
            pickle.dump({"metrics": evaluation.metrics, "predictions": evaluation.predictions,
                         "n_windows_here": len(trainer._loader(trainer.train_data, False, 0).dataset)}, handle)
    finally:
        shutdown_distributed()


def fit_worker(rank: int, world_size: int, port: int, setup_path: str, out_dir: str) -> None:
    """Train with ``world_size`` ranks; each rank pickles its final weights and its history."""
    from base.training.distributed import init_distributed, shutdown_distributed

    torch.set_num_threads(1)
    set_rank_environment(rank, world_size, port)
    context = init_distributed("cpu")
    try:
        trainer = build_trainer(setup_path, context)
        state = trainer.fit()
        with open(Path(out_dir) / f"fit{rank}.pkl", "wb") as handle:
            pickle.dump({"model": {k: v.clone() for k, v in trainer.model.state_dict().items()},
                         "history": state.history}, handle)
    finally:
        shutdown_distributed()


def build_trainer(setup_path: str, context=None):
    """A Trainer over the dataset, config and weights pickled in ``setup_path``."""
    from base.data.processed import ProcessedDataset
    from base.training.cross_validation import fold_partitions, needs_statistics
    from base.training.run_folder import RunFolder
    from base.training.trainer import Trainer
    from model import build_model

    with open(setup_path, "rb") as handle:
        setup = pickle.load(handle)
    config = setup["config"]
    dataset = ProcessedDataset(config.train.dataset_path)
    mean_std = dataset.mean_std() if needs_statistics(config.model.modality) else None
    train, validation = fold_partitions(dataset, config, 0, mean_std)
    model = build_model(config.model)
    model.load_state_dict(setup["state"])
    return Trainer(model, config, torch.device("cpu"), RunFolder(Path(setup["run_dir"])), train, validation, context)


def main_worker(rank: int, world_size: int, port: int, args: list[str], save_root: str) -> None:
    """``main.main(args)`` as one rank of a torchrun job, each rank with its own ``--save-path``.

    Separate save paths reveal which rank wrote what (the save path does not change the run).
    """
    import main

    torch.set_num_threads(1)
    set_rank_environment(rank, world_size, port)
    main.main([*args, "--save-path", str(Path(save_root) / f"rank{rank}")])


def resume_worker(rank: int, world_size: int, port: int, args: list[str], out_dir: str) -> None:
    """``run_fold`` as ``main.py`` runs it, three times in one process group: 3 epochs straight (save path
    ``straight``), 1 epoch (``resumed``: the run killed after epoch 0), then the same run resumed up to 3.

    Each rank pickles its global random states after each run and the zero pattern of the first
    training dropout outputs of the straight run (``dropout{rank}.pkl``, ``rng{rank}.pkl``).
    """
    import torch.distributed as dist

    import main
    from base.training import cross_validation
    from base.training.checkpointing import capture_rng_state
    from base.training.distributed import init_distributed, rank_config, shutdown_distributed

    torch.set_num_threads(1)
    set_rank_environment(rank, world_size, port)
    context = init_distributed("cpu")
    dropped: list[torch.Tensor] = []
    build_model = cross_validation.build_model

    def record(module, inputs, output) -> None:
        if module.training and len(dropped) < 4:
            dropped.append((output == 0).all(dim=-1).clone())  # (B, C): channels Dropout1d zeroed

    def recording_build_model(model_config):
        model = build_model(model_config)
        for module in model.modules():
            if isinstance(module, torch.nn.modules.dropout._DropoutNd):
                module.register_forward_hook(record)
        return model

    try:
        states = {}
        for name, save, extra in (("straight", "straight", ["--num-epochs", "3"]),
                                  ("killed", "resumed", ["--num-epochs", "1"]),
                                  ("resumed", "resumed", ["--num-epochs", "3", "--resume", "1"])):
            cross_validation.build_model = recording_build_model if name == "straight" else build_model
            config = rank_config(main.parse_config([*args, *extra, "--save-path", str(Path(out_dir) / save)]), context)
            dataset = cross_validation.open_dataset(config)
            cross_validation.run_fold(config, dataset, 0, context.device, dataset.mean_std(), context)
            dist.barrier()  # rank 0 has written its checkpoint before any rank resumes from it
            states[name] = capture_rng_state()
        with open(Path(out_dir) / f"rng{rank}.pkl", "wb") as handle:
            pickle.dump(states, handle)
        with open(Path(out_dir) / f"dropout{rank}.pkl", "wb") as handle:
            pickle.dump(dropped, handle)
    finally:
        cross_validation.build_model = build_model
        shutdown_distributed()
