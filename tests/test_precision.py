"""Mixed precision (bf16/fp16 autocast, gradient scaler) and the channels_last backbone, on the CPU."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import main
from base.errors import UserError
from base.training.run_folder import read_csv
from base.training.trainer import autocast_dtype, loss_weights, output_emotions, training_step
from configs import ModelConfig
from model import build_model
from tests.processed_helpers import make_processed_dataset

# tiny models run fastest on one thread (and do not suffer from a busy machine)
pytestmark = pytest.mark.usefixtures("one_torch_thread")

CPU = torch.device("cpu")


def test_precision_names_map_to_autocast_dtypes():
    assert autocast_dtype("fp32", CPU) is None
    assert autocast_dtype("bf16", CPU) is torch.bfloat16
    with pytest.raises(UserError, match="precision fp16 needs a CUDA device"):
        autocast_dtype("fp16", CPU)
    with pytest.raises(UserError, match="config key 'precision' must be fp32, bf16 or fp16, got 'half'"):
        autocast_dtype("half", CPU)


@pytest.mark.parametrize(("capability", "accepted"), [((7, 5), False), ((7, 0), False), ((8, 0), True), ((9, 0), True)])
def test_bf16_on_a_gpu_needs_compute_capability_8_of_the_training_device(monkeypatch, capability, accepted):
    asked = []
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: asked.append(device) or capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    training_device = torch.device("cuda:1")  # not the current device (cuda:0)
    if accepted:
        assert autocast_dtype("bf16", training_device) is torch.bfloat16
    else:
        with pytest.raises(UserError) as error:
            autocast_dtype("bf16", training_device)
        message = str(error.value)
        assert "\n" not in message and message.startswith("precision bf16 needs a GPU of compute capability 8.0")
        assert f"Tesla T4 (cuda:1) is {capability[0]}.{capability[1]}" in message
        assert message.endswith("use --precision fp16")
    assert asked == [training_device]


def frame_batch(n_windows: int = 2, n_frames: int = 3) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    frames = torch.rand(n_windows, n_frames, 3, 40, 40, generator=generator) * 2 - 1  # (B, T, 3, 40, 40)
    labels = torch.rand(n_windows, n_frames, 2, generator=generator) * 2 - 1  # (B, T, 2)
    return {"frame": frames}, labels, torch.ones(n_windows, n_frames, dtype=torch.bool)


def released_frame_model(config: ModelConfig, channels_last: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(config)
    model.release_groups(1)  # the backbone's output layer trains, as at epoch 0 of the recipe
    if channels_last:
        model.backbone.to(memory_format=torch.channels_last)
    return model.train()


@pytest.mark.parametrize(("amp_dtype", "channels_last"), [(torch.bfloat16, False), (torch.bfloat16, True),
                                                          (None, True)])
def test_frame_model_training_steps_stay_finite(amp_dtype, channels_last):
    config = ModelConfig(modality=("frame",), random_backbone=True)
    model = released_frame_model(config, channels_last)
    before = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=1e-3)
    inputs, labels, mask = frame_batch()
    for _ in range(2):
        loss = training_step(model, optimizer, inputs, labels, mask, output_emotions(config),
                             loss_weights(config, 10.0), amp_dtype=amp_dtype)
        assert loss.dtype == torch.float32 and math.isfinite(loss.item())
    changed = [name for name, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[name])]
    assert any(name.startswith("backbone.output_layer") for name in changed)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_channels_last_computes_what_the_default_layout_computes():
    config = ModelConfig(modality=("frame",), random_backbone=True)
    inputs, _, _ = frame_batch()
    default, strided = released_frame_model(config).eval(), released_frame_model(config, channels_last=True).eval()
    assert strided.backbone.input_layer[0].weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(strided(inputs), default(inputs), atol=1e-4, rtol=1e-4)


def test_fp16_with_a_gradient_scaler_steps_and_scales():
    # CPU autocast accepts fp16 in this torch: it exercises the scaler path the CUDA runs take
    config = ModelConfig(modality=("vggish", "mfcc"))
    torch.manual_seed(0)
    model = build_model(config).train()
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    generator = torch.Generator().manual_seed(1)
    inputs = {"vggish": torch.randn(2, 8, 128, generator=generator), "mfcc": torch.randn(2, 8, 39, generator=generator)}
    labels, mask = torch.rand(2, 8, 2, generator=generator), torch.ones(2, 8, dtype=torch.bool)
    head_before = model.head.weight.detach().clone()
    loss = training_step(model, optimizer, inputs, labels, mask, output_emotions(config), loss_weights(config, 10.0),
                         amp_dtype=torch.float16, scaler=scaler)
    assert math.isfinite(loss.item())
    assert scaler.get_scale() == 2.0**10  # finite gradients: the scale is kept
    assert not torch.equal(model.head.weight, head_before)


@pytest.mark.slow
def test_main_trains_a_frame_model_in_bf16_with_channels_last(tmp_path: Path):
    dataset = make_processed_dataset(tmp_path / "data", n_train=5, n_val=1, n_test=0, lengths=4,
                                     modalities=("frame",))
    args = ["--dataset-path", str(dataset), "--save-path", str(tmp_path / "runs"), "--modality", "frame",
            "--random-backbone", "--window-length", "4", "--hop-length", "4", "--batch-size", "2", "--debug", "2",
            "--num-epochs", "1", "--learning-rate", "1e-3", "--precision", "bf16", "--channels-last", "--quiet"]
    assert main.main(args) == 0
    (run,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    (row,) = read_csv(run / "history.csv")
    assert math.isfinite(float(row["train_loss"])) and math.isfinite(float(row["valence_ccc"]))
    assert row["n_released"] == "1"


def test_fp16_on_the_cpu_is_refused_by_main(tmp_path: Path):
    dataset = make_processed_dataset(tmp_path / "data", n_train=5, n_val=1, n_test=0, lengths=6,
                                     modalities=("mfcc",))
    with pytest.raises(UserError, match="precision fp16 needs a CUDA device"):
        main.main(["--dataset-path", str(dataset), "--save-path", str(tmp_path / "runs"), "--modality", "mfcc",
                   "--window-length", "4", "--hop-length", "4", "--device", "cpu", "--precision", "fp16", "--quiet"])
