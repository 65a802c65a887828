"""GPU settings checked on the CPU, with what only a GPU has monkeypatched: no silent CPU fallback, one
clear error line, ``set_device`` for ``cuda:N``, DataLoader workers and pinned memory on CUDA, cuDNN modes."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

import main
from base.data.processed import ProcessedDataset
from base.errors import UserError, run_cli
from base.training import devices
from base.training.cross_validation import fold_partitions
from base.training.devices import loader_workers, resolve_device, set_determinism
from base.training.distributed import DistributedContext, init_distributed
from base.training.run_folder import RunFolder
from base.training.trainer import Trainer
from configs import Config, apply_overrides
from model import build_model
from tests.processed_helpers import make_processed_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CUDA = torch.device("cuda:0")


@pytest.fixture
def no_gpu(monkeypatch):
    """A machine where torch sees no usable GPU (an old driver, a node that did not expose one)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.version, "cuda", "12.4")


@pytest.fixture
def two_gpus(monkeypatch):
    """A machine with two GPUs; ``set_device`` calls are recorded instead of made."""
    calls: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", calls.append)
    return calls


@pytest.mark.parametrize("flags", [["--device", "cuda"], ["--device", "cuda:1"], ["-gpu", "0"]])
def test_a_gpu_asked_for_without_one_is_one_error_line_and_a_failing_exit(no_gpu, capsys, flags):
    code = run_cli(main.main, [*flags, "--dataset-path", "unused", "--quiet"])
    err = capsys.readouterr().err
    assert code != 0
    assert err.count("\n") == 1 and err.startswith("error: device 'cuda")
    assert "torch cannot use one here" in err and "built with CUDA 12.4, 0 GPU(s) visible" in err
    assert "--device cpu" in err


def test_auto_falls_back_to_the_cpu_and_says_so(no_gpu, caplog, monkeypatch):
    with caplog.at_level(logging.INFO, logger="base.training.devices"):
        assert resolve_device("auto") == torch.device("cpu")
    (record,) = caplog.records
    assert record.levelno == logging.WARNING  # a CUDA build that finds no GPU: suspicious
    assert "device auto: no usable GPU (torch" in record.message and "running on the CPU" in record.message
    caplog.clear()
    monkeypatch.setattr(torch.version, "cuda", None)  # a CPU-only build: the CPU is what was installed
    with caplog.at_level(logging.INFO, logger="base.training.devices"):
        assert resolve_device("auto") == torch.device("cpu")
    (record,) = caplog.records
    assert record.levelno == logging.INFO and "built with CUDA none (CPU-only build)" in record.message


def test_a_gpu_index_beyond_the_machine_is_an_error(two_gpus):
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(UserError, match=r"device 'cuda:2' does not exist: .*2 GPU\(s\) visible"):
        resolve_device("cuda:2")


def test_a_single_process_on_cuda_n_makes_it_the_current_device(two_gpus):
    context = init_distributed("cuda:1", environ={})
    assert context.device == torch.device("cuda:1") and not context.is_distributed
    assert two_gpus == [torch.device("cuda:1")]
    init_distributed("cpu", environ={})
    assert len(two_gpus) == 1


def test_auto_workers_follow_the_device_and_the_cpus(monkeypatch):
    monkeypatch.setattr(devices, "available_cpus", lambda: 16)
    cpu = torch.device("cpu")
    assert loader_workers(-1, cpu) == 0  # the CPU path: the training process uses the cores
    assert loader_workers(-1, CUDA) == 8  # min(8, 16 - 1)
    assert loader_workers(-1, CUDA, n_ranks=4) == 3  # 16 / 4 ranks - 1
    assert loader_workers(0, CUDA) == 0 and loader_workers(3, cpu) == 3  # explicit values are kept
    monkeypatch.setattr(devices, "available_cpus", lambda: 1)
    assert loader_workers(-1, CUDA) == 1
    with pytest.raises(UserError, match="'num_workers' must be -1 \\(auto\\), 0 or more, got -2"):
        apply_overrides(Config(), {"num_workers": -2})


def test_the_training_loader_on_cuda_has_workers_and_pinned_memory(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(devices, "available_cpus", lambda: 3)
    data = make_processed_dataset(tmp_path / "data", n_train=5, n_val=1, n_test=0, lengths=8, modalities=("mfcc",))
    config = apply_overrides(Config(), {"model": {"modality": ["mfcc"]}, "train": {
        "dataset_path": str(data), "window_length": 4, "hop_length": 4, "quiet": True}})
    assert config.train.num_workers == -1  # the default: auto
    dataset = ProcessedDataset(data)
    train, validation = fold_partitions(dataset, config, 0, dataset.mean_std())
    trainer = Trainer(build_model(config.model), config, torch.device("cpu"), RunFolder(tmp_path / "run"),
                      train, validation)
    loader = trainer._loader(train, shuffle=True, epoch=0)
    assert loader.num_workers == 0 and not loader.pin_memory  # on the CPU
    trainer.device = CUDA  # what the loader settings depend on (the model itself cannot move here)
    trainer.context = DistributedContext(device=CUDA)
    loader = trainer._loader(train, shuffle=True, epoch=0)
    assert loader.num_workers == 2 and loader.pin_memory  # 3 CPUs - 1


def test_determinism_switches_cudnn_benchmark():
    before = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    try:
        set_determinism(True)
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        set_determinism(False)
        assert not torch.backends.cudnn.deterministic and torch.backends.cudnn.benchmark
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before
    assert Config().train.deterministic
