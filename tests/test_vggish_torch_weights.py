"""VGGish in PyTorch layout (the authors' ``vggish.pth``): the key mapping, its checks, and the same
embeddings as the TensorFlow checkpoint through the extractor and through preprocessing.

The fast tests need torch only: their state dicts are zero-stride tensors of the real shapes, a
few bytes on disk. The slow ones use a random 288 MB checkpoint (TensorFlow writes it once per session).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import preprocessing
from base.errors import UserError, run_cli
from base.preprocessing import demo
from configs import DemoConfig
from tests.conftest import ROOT
from vggish import params
from vggish.checkpoint import check_checkpoint
from vggish.extractor import VggishExtractor
from vggish.torch_weights import (
    convert_slim_checkpoint,
    is_torch_checkpoint,
    load_slim_variables,
    read_slim_checkpoint,
    read_torch_checkpoint,
    slim_to_torch,
    torch_names,
    torch_shapes,
)

# ----------------------------------------------------------------------------- the mapping


def test_key_names_and_shapes_on_hand_values():
    names = torch_names()
    assert names["vggish/conv1/weights"] == "features.0.weight"
    assert names["vggish/conv2/biases"] == "features.3.bias"  # conv1, relu, pool1, conv2
    assert [names[f"vggish/{s}/weights"] for s in ("conv3/conv3_1", "conv3/conv3_2", "conv4/conv4_1",
                                                   "conv4/conv4_2")] == [
        "features.6.weight", "features.8.weight", "features.11.weight", "features.13.weight"]
    assert [names[f"vggish/{s}/weights"] for s in ("fc1/fc1_1", "fc1/fc1_2", "fc2")] == [
        "embeddings.0.weight", "embeddings.2.weight", "embeddings.4.weight"]
    shapes = torch_shapes()
    assert len(shapes) == 18
    assert shapes["features.0.weight"] == (64, 1, 3, 3)  # slim (3, 3, 1, 64)
    assert shapes["features.13.weight"] == (512, 512, 3, 3)
    assert shapes["embeddings.0.weight"] == (4096, 12288)  # slim (12288, 4096)
    assert shapes["embeddings.4.weight"] == (128, 4096) and shapes["embeddings.4.bias"] == (128,)


def test_the_torchvggish_module_has_these_keys():
    assert {k: tuple(v.shape) for k, v in _AuthorsVggish().state_dict().items()} == torch_shapes()


def _zero_state(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Tensors of the given shapes that share one zero (stride 0): a few bytes when saved."""
    return {key: torch.zeros(()).expand(shape) for key, shape in shapes.items()}


def test_wrapped_state_dict_loads_and_the_pca_is_ignored(tmp_path):
    state = {f"module.{k}": v for k, v in _zero_state(torch_shapes()).items()}
    state["module.pproc.pca_means"] = torch.zeros(128, 1)  # torchvggish's full model saves its PCA
    path = tmp_path / "weights"  # no suffix: recognised by its zip header
    torch.save({"state_dict": state, "epoch": 3}, path)
    assert is_torch_checkpoint(path)
    loaded = read_torch_checkpoint(path)
    assert {k: v.shape for k, v in loaded.items()} == torch_shapes()
    assert check_checkpoint(path) == str(path)


def test_missing_unexpected_and_misshaped_keys_are_one_line(tmp_path):
    shapes = torch_shapes()
    state = _zero_state({k: s for k, s in shapes.items() if k != "embeddings.4.bias"})
    state["features.0.weight"] = torch.zeros(3, 3, 1, 64)  # slim layout, not transposed
    state["embeddings.5.weight"] = torch.zeros(1)
    path = tmp_path / "vggish.pth"
    torch.save(state, path)
    with pytest.raises(UserError) as info:
        check_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"VGGish weights {path} do not fit the PyTorch VGGish layout")
    assert "missing keys 1 (embeddings.4.bias)" in message
    assert "unexpected keys 1 (embeddings.5.weight)" in message
    assert "shapes differ (file vs VGGish) for 1 (features.0.weight (3, 3, 1, 64) vs (64, 1, 3, 3))" in message
    assert "sucv/ABAW3" in message


def test_unreadable_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match=r"vggish.pth not found; use the authors' vggish.pth"):
        check_checkpoint(tmp_path / "vggish.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not weights" * 10)
    with pytest.raises(UserError, match="could not be read as a PyTorch state dict"):
        check_checkpoint(garbage)
    whole = tmp_path / "whole.pth"
    torch.save(_zero_state(torch_shapes()), whole)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(whole.read_bytes()[:300])
    with pytest.raises(UserError, match="could not be read as a PyTorch state dict"):
        check_checkpoint(truncated)
    module = tmp_path / "module.pth"
    torch.save(nn.Linear(2, 2), module)  # a pickled module: weights_only refuses it
    with pytest.raises(UserError, match=r"hold a pickled torch.nn.modules.linear.Linear, not only tensors: "
                       r"save the model's state_dict\(\) instead"):
        check_checkpoint(module)
    a_list = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], a_list)
    with pytest.raises(UserError, match="hold a list, not a state dict"):
        check_checkpoint(a_list)
    integers = tmp_path / "int.pth"
    torch.save({**_zero_state(torch_shapes()), "features.0.bias": torch.zeros(64, dtype=torch.int64)}, integers)
    with pytest.raises(UserError, match=r"store features.0.bias as torch.int64"):
        check_checkpoint(integers)


def test_tensorflow_checkpoints_are_not_taken_for_torch_files(tmp_path):
    v1 = tmp_path / "vggish_model.ckpt"
    v1.write_bytes(b"\x00\x00\x05" + b"x" * 100)  # a V1 table starts with a block entry
    assert not is_torch_checkpoint(v1)
    assert not is_torch_checkpoint(tmp_path / "prefix.ckpt")  # a V2 prefix is no file
    assert is_torch_checkpoint(tmp_path / "absent.pth")  # named .pth: reported as a missing vggish.pth


def test_importing_the_mapping_imports_neither_torch_nor_tensorflow():
    code = ("import sys, vggish.torch_weights, vggish.checkpoint, vggish.extractor; "
            "assert not {'torch', 'tensorflow'} & set(sys.modules), 'imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr


# ----------------------------------------------------------------------------- the same embeddings


class _AuthorsVggish(nn.Module):
    """VGGish as the authors' ABAW3 ``models/backbone.py`` defines it (written from its description):
    six 3x3 conv + ReLU with 2x2 max-pools, the map flattened in (H, W, C) order, three Linear with
    ReLU after the first two only."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for width in (64, "pool", 128, "pool", 256, 256, "pool", 512, 512, "pool"):
            if width == "pool":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, int(width), 3, padding=1), nn.ReLU()]
                channels = int(width)
        self.features = nn.Sequential(*layers)
        self.embeddings = nn.Sequential(nn.Linear(512 * 6 * 4, 4096), nn.ReLU(), nn.Linear(4096, 4096),
                                        nn.ReLU(), nn.Linear(4096, 128))

    def forward(self, patches: torch.Tensor) -> torch.Tensor:  # (N, 96, 64) -> (N, 128)
        x = self.features(patches[:, None])  # (N, 512, 6, 4)
        x = x.permute(0, 2, 3, 1).reshape(len(x), -1)  # (N, 6 * 4 * 512), NHWC as TensorFlow
        return self.embeddings(x)


@pytest.fixture(scope="module")
def weights(vggish_checkpoints, tmp_path_factory) -> dict[str, Path]:
    """One random slim checkpoint and the vggish.pth the inverse mapping writes from it."""
    ckpt = vggish_checkpoints["v2"]
    pth = convert_slim_checkpoint(ckpt, tmp_path_factory.mktemp("vggish_torch") / "vggish.pth")
    return {"ckpt": ckpt, "pth": pth}


def _sine(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * params.SAMPLE_RATE_HZ)) / params.SAMPLE_RATE_HZ
    return (0.5 * np.sin(2 * np.pi * 440.0 * t) + 0.1 * np.sin(2 * np.pi * 97.0 * t)).astype(np.float32)


@pytest.mark.slow  # needs TensorFlow
def test_pth_round_trips_and_gives_the_checkpoints_embeddings(weights):
    slim = read_slim_checkpoint(weights["ckpt"])
    from_pth = load_slim_variables(weights["pth"])
    assert from_pth.keys() == slim.keys()
    for name, value in slim.items():
        np.testing.assert_array_equal(from_pth[name], value, err_msg=name)

    waveform, fps, n_frames = _sine(2.5), 10.0, 25
    with VggishExtractor(str(weights["ckpt"]), num_threads=1) as tf_vggish:
        expected = tf_vggish.embed_frames(waveform, params.SAMPLE_RATE_HZ, fps, n_frames)
    with VggishExtractor(str(weights["pth"]), num_threads=1) as torch_vggish:
        got = torch_vggish.embed_frames(waveform, params.SAMPLE_RATE_HZ, fps, n_frames)
        patches = np.random.default_rng(0).normal(size=(3, 96, 64)).astype(np.float32) * 3
        graph_out = torch_vggish.embed_patches(patches)
    assert expected.shape == (n_frames, 128) and expected.std() > 0
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)

    # The layout is right, not only self-consistent: the authors' torch network with these
    # weights computes what the slim graph computes.
    network = _AuthorsVggish().eval()
    network.load_state_dict({k: torch.from_numpy(v) for k, v in slim_to_torch(slim).items()}, strict=True)
    with torch.no_grad():
        torch_out = network(torch.from_numpy(patches)).numpy()
    scale = np.abs(graph_out).max()
    np.testing.assert_allclose(torch_out / scale, graph_out / scale, rtol=0, atol=1e-5)


TINY_DEMO = DemoConfig(demo_n_train_videos=1, demo_n_validation_videos=1, demo_n_test_videos=0,
                       demo_min_seconds=3.0, demo_max_seconds=4.0)


@pytest.mark.slow  # two preprocessing runs (spawned TensorFlow workers)
def test_preprocessing_with_pth_writes_the_checkpoints_vggish_features(weights, tmp_path):
    database = demo.make_demo_database(tmp_path / "Affwild2", TINY_DEMO, quiet=True)
    outputs = {}
    for kind in ("ckpt", "pth"):
        outputs[kind] = tmp_path / f"out_{kind}"
        argv = ["--database", str(database), "--output", str(outputs[kind]), "--jobs", "1", "--quiet",
                "--vggish-checkpoint", str(weights[kind])]
        assert run_cli(preprocessing.main, argv) == 0
    trials = sorted(p.name for p in (outputs["ckpt"] / "npy_data").iterdir())
    assert len(trials) == 2
    for trial in trials:
        expected = np.load(outputs["ckpt"] / "npy_data" / trial / "vggish.npy")
        got = np.load(outputs["pth"] / "npy_data" / trial / "vggish.npy")
        assert expected.shape == got.shape and expected.shape[1] == 128 and expected.std() > 0
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5, err_msg=trial)


@pytest.mark.slow  # one preprocessing start-up
def test_preprocessing_rejects_a_bad_pth_in_one_line(tmp_path, capsys):
    database = demo.make_demo_database(tmp_path / "Affwild2", TINY_DEMO, quiet=True)
    bad = tmp_path / "vggish.pth"
    torch.save(_zero_state({k: s for k, s in torch_shapes().items() if not k.startswith("embeddings.4")}), bad)
    argv = ["--database", str(database), "--output", str(tmp_path / "out"), "--vggish-checkpoint", str(bad)]
    capsys.readouterr()  # what making the database printed
    assert run_cli(preprocessing.main, argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: VGGish weights") and err.count("\n") == 1
    assert "missing keys 2 (embeddings.4.weight, embeddings.4.bias)" in err
