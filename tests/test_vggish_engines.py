"""The two VGGish engines (TensorFlow's slim graph, torch's ``vggish.network``): the same embeddings
from the same weights, through the extractor API and through preprocessing; the torch engine and
``load_vggish`` without TensorFlow; the ``vggish/`` imports without a circle.

Equality is measured as ``max |torch - tf| / max |tf|`` over a whole array (elementwise relative
differences are meaningless where an embedding crosses zero); the bar is 1e-4.

The fast tests need torch only (a random ``vggish.pth`` written by torch); the slow ones use the
release's checkpoint formats with random weights (``vggish_checkpoints``, written by TensorFlow once
per session).
"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

import configs
import preprocessing
from base.errors import UserError, run_cli
from base.preprocessing import demo
from configs import Config, DemoConfig, FeatureConfig, apply_overrides
from tests.conftest import ROOT
from vggish import params
from vggish.checkpoint import write_random_pca_params
from vggish.engines import VGGISH_ENGINES, VggishEngine, check_engine, make_extractor
from vggish.extractor import VggishExtractor, gather_patches, patch_starts, prepare_waveform
from vggish.mel_features import log_mel_spectrogram
from vggish.network import VGGish, load_vggish
from vggish.slim_checkpoint import read_slim_checkpoint
from vggish.torch_extractor import TorchVggishExtractor, torch_device
from vggish.torch_weights import torch_shapes

SR = params.SAMPLE_RATE_HZ
EQUALITY = 1e-4  # max |torch - tf| / max |tf|


def relative_difference(got: np.ndarray, expected: np.ndarray) -> float:
    """``max |got - expected| / max |expected|``: the engines' difference on the scale of the embedding."""
    return float(np.abs(got - expected).max() / np.abs(expected).max())


def voice_like(seconds: float, seed: int = 0) -> np.ndarray:
    """Gliding tones with harmonics, noise and a silent gap: float32 in [-1, 1] at 16 kHz."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    pitch = 140 + 40 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / SR
    wave = sum(0.25 / k * np.sin(k * phase) for k in (1, 2, 3)) + 0.03 * rng.standard_normal(len(t))
    wave[(t > 1.5) & (t < 2.0)] = 0.0  # silence: the log-mel floor
    return wave.astype(np.float32)


def write_wav(path: Path, seconds: float) -> Path:
    soundfile.write(path, voice_like(seconds), SR, subtype="PCM_16")
    return path


# ----------------------------------------------------------------------------- imports


def vggish_import_graph() -> dict[str, set[str]]:
    """Module -> the ``vggish`` modules it imports anywhere in its code (also inside functions)."""
    package = ROOT / "vggish"
    modules = {path.stem for path in package.glob("*.py")} - {"__init__"}

    def target(name: str) -> str | None:
        parts = name.split(".")
        if parts[0] != "vggish":
            return None
        return parts[1] if len(parts) > 1 and parts[1] in modules else "__init__"

    graph: dict[str, set[str]] = {}
    for path in package.glob("*.py"):
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                edges |= {t for alias in node.names if (t := target(alias.name))}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module == "vggish":  # from vggish import params, network, ...
                    edges |= {alias.name if alias.name in modules else "__init__" for alias in node.names}
                elif t := target(node.module):
                    edges.add(t)
        graph[path.stem] = edges - {path.stem}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One circle of imports (``[a, b, ..., a]``), or ``[]`` when the graph is acyclic."""
    state: dict[str, str] = {}  # visiting / done
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = "visiting"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "visiting":
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = "done"
        return []

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return []


def test_find_cycle_on_hand_graphs():
    assert find_cycle({"checkpoint": {"torch_weights"}, "torch_weights": {"checkpoint"}}) == [
        "checkpoint", "torch_weights", "checkpoint"]  # the circle this package had
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_vggish_modules_import_each_other_without_a_circle():
    graph = vggish_import_graph()
    assert find_cycle(graph) == [], f"a circle of imports in vggish/: {' -> '.join(find_cycle(graph))}"
    # the former circle is cut, and the torch side never reaches back for the TensorFlow engine
    assert "torch_weights" in graph["checkpoint"] and "checkpoint" not in graph["torch_weights"]
    assert graph["network"] == {"params", "torch_weights"}
    assert "slim_checkpoint" in graph["torch_weights"] and "__init__" not in set().union(*graph.values())


def test_importing_the_engines_imports_neither_torch_nor_tensorflow():
    code = ("import sys, vggish, vggish.engines, vggish.slim_checkpoint, vggish.torch_weights; "
            "assert not {'torch', 'tensorflow'} & set(sys.modules), 'imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr


# ----------------------------------------------------------------------------- engine and device settings


def test_engine_names_and_the_config_key():
    assert VGGISH_ENGINES == configs.VGGISH_ENGINES == ("tf", "torch")
    assert check_engine("torch") is VggishEngine.TORCH and FeatureConfig().vggish_engine == "tf"
    with pytest.raises(UserError, match="^VGGish engine must be tf or torch, got 'jax'$"):
        check_engine("jax")
    with pytest.raises(UserError, match="^config key 'vggish_engine' must be tf or torch, got 'TF'$"):
        apply_overrides(Config(), {"vggish_engine": "TF"})
    args = preprocessing.build_parser().parse_args(["--vggish-engine", "torch", "--vggish-device", "gpu"])
    assert configs.resolve(args).features.vggish_engine == "torch"


def test_gpu_without_a_gpu_is_one_line_before_any_work(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # also on a machine with a GPU
    assert torch_device("cpu") == torch.device("cpu")
    with pytest.raises(UserError) as info:
        torch_device("gpu")
    message = str(info.value)
    assert "\n" not in message and message.startswith("VGGish device gpu with the torch engine needs a GPU, but "
                                                      "torch cannot use one here (torch ")
    assert message.endswith("or pass --vggish-device cpu")
    with pytest.raises(UserError, match="VGGish device must be cpu or gpu, got 'cuda'"):
        torch_device("cuda")
    features = FeatureConfig(vggish_engine="torch", vggish_device="gpu", vggish_checkpoint=str(tmp_path / "x.pth"))
    with pytest.raises(UserError, match="needs a GPU"):  # checked before the weights, before any worker starts
        preprocessing.resolve_vggish(features, tmp_path, tmp_path / "out")


# ----------------------------------------------------------------------------- torch only


@pytest.fixture(scope="module")
def random_pth(tmp_path_factory) -> Path:
    """A vggish.pth of torch's default initialisation (seed 0), with a non-zero bias everywhere."""
    torch.manual_seed(0)
    network = VGGish()
    with torch.no_grad():
        for name, parameter in network.named_parameters():
            if name.endswith("bias"):
                parameter.uniform_(-0.05, 0.05)
    path = tmp_path_factory.mktemp("vggish_pth") / "vggish.pth"
    torch.save({f"module.{k}": v for k, v in network.state_dict().items()}, path)  # as nn.DataParallel saves it
    return path


def test_load_vggish_is_strict_and_says_what_is_wrong(random_pth, tmp_path):
    network = load_vggish(random_pth)
    assert isinstance(network, VGGish) and not network.training
    assert {k: tuple(v.shape) for k, v in network.state_dict().items()} == torch_shapes()
    saved = torch.load(random_pth, weights_only=True)
    assert all(torch.equal(network.state_dict()[k], saved[f"module.{k}"]) for k in torch_shapes())
    assert all(p.requires_grad for p in network.parameters())  # the ABAW5 backbone fine-tunes them
    with torch.no_grad():
        assert network(torch.zeros(2, 96, 64)).shape == (2, 128)
    bad = tmp_path / "vggish.pth"
    torch.save({k: v for k, v in saved.items() if not k.endswith("embeddings.4.bias")}, bad)
    with pytest.raises(UserError) as info:
        load_vggish(bad)
    assert "\n" not in str(info.value) and "missing keys 1 (embeddings.4.bias)" in str(info.value)
    with pytest.raises(UserError, match="not found: expected the file vggish_model.ckpt"):
        load_vggish(tmp_path / "vggish_model.ckpt")


def test_torch_extractor_frames_batches_and_postprocessing(random_pth, tmp_path):
    waveform, fps, n_frames = voice_like(2.6), 10.0, 30  # 30 frames > 2.6 s of video: the end repeats
    pca_path = tmp_path / "vggish_pca_params.npz"
    write_random_pca_params(pca_path)
    with make_extractor("torch", str(random_pth), str(pca_path), batch_size=256) as vggish:
        assert isinstance(vggish, TorchVggishExtractor) and vggish.torch_device == torch.device("cpu")
        first = vggish.embed_frames(waveform, SR, fps, n_frames)
        log_mel = log_mel_spectrogram(prepare_waveform(waveform, SR))  # 3.6 s padded: 358 rows
        starts = patch_starts(n_frames, fps, n_log_mel_frames=len(log_mel))
        patches = gather_patches(log_mel, starts)  # (30, 96, 64)
        direct = load_vggish(random_pth)(torch.from_numpy(patches)).detach().numpy()
        quantized = vggish.pca.apply(first, quantize=True)
    assert first.shape == (n_frames, 128) and first.dtype == np.float32 and first.std() > 0
    assert relative_difference(first, direct) < 1e-6  # frame i embeds the patch at round(i / fps / 10 ms)
    np.testing.assert_array_equal(first[27], first[29])  # 1 + floor((358 - 96) / 10) = 27 patches
    with pytest.raises(RuntimeError, match="this TorchVggishExtractor is closed"):
        vggish.embed_patches(patches)

    with TorchVggishExtractor(random_pth, str(pca_path), batch_size=7, num_threads=1, postprocess=True) as small:
        threads = torch.get_num_threads()
        post = small.embed_frames(waveform, SR, fps, n_frames)
        assert torch.get_num_threads() == threads  # the extractor's thread count is not left behind
    assert post.dtype == np.float32 and post.min() >= 0 and post.max() <= 255
    assert np.abs(post - quantized).max() <= 1  # the same PCA; batches of 7 may round one level apart
    with pytest.raises(UserError, match="batch size must be at least 1"):
        TorchVggishExtractor(random_pth, batch_size=0)
    with pytest.raises(UserError, match="postprocessing needs the PCA parameters"):
        TorchVggishExtractor(random_pth, postprocess=True)


def test_a_torch_vggish_worker_is_built_by_the_pool_initializer(random_pth, monkeypatch):
    from base.preprocessing import preprocess

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # both restored after the test
    monkeypatch.setattr(preprocess, "_EXTRACTOR", None)
    preprocess._init_vggish(str(random_pth), None, 16, 1, "cpu", "torch")
    assert isinstance(preprocess._EXTRACTOR, TorchVggishExtractor) and preprocess._EXTRACTOR.batch_size == 16
    assert preprocess._EXTRACTOR.device == "cpu"
    preprocess._EXTRACTOR.close()


# ----------------------------------------------------------------------------- against TensorFlow


@pytest.mark.slow  # TensorFlow writes and reads two 288 MB checkpoints
def test_the_pure_python_reader_gives_tensorflows_values_bit_for_bit(vggish_checkpoints, tmp_path):
    from vggish.slim_model import import_tensorflow

    tf = import_tensorflow()
    for fmt, path in vggish_checkpoints.items():
        reader = tf.train.load_checkpoint(str(path))
        values = read_slim_checkpoint(path)
        for name, value in values.items():
            np.testing.assert_array_equal(value, reader.get_tensor(name), err_msg=f"{fmt} {name}")
            assert value.dtype == np.float32 and value.flags.writeable

    # bytes damaged in place: TensorFlow's checksums would tell; the reader sees the NaN they make
    damaged = tmp_path / "vggish_model.ckpt"
    shutil.copy(f"{vggish_checkpoints['v2']}.index", f"{damaged}.index")
    data = Path(f"{damaged}.data-00000-of-00001")
    shutil.copy(f"{vggish_checkpoints['v2']}.data-00000-of-00001", data)
    with open(data, "r+b") as handle:
        handle.seek(4 * 1000)
        handle.write(np.full(16, np.nan, np.float32).tobytes())
    with pytest.raises(UserError, match=r"holds NaN or infinite weights in vggish/\S+: it is damaged"):
        read_slim_checkpoint(damaged)


@pytest.mark.slow  # TensorFlow
def test_the_engines_give_the_same_embeddings_of_a_wav(vggish_checkpoints, tmp_path):
    wav = write_wav(tmp_path / "voice.wav", seconds=4.0)
    fps, n_frames = 30.0, 125  # 4.17 s of video: the last frames reuse the last patch
    with VggishExtractor(str(vggish_checkpoints["v1"]), batch_size=64, num_threads=1) as tf_engine:
        expected = tf_engine.embed_wav_file(wav, fps, n_frames)
    with make_extractor("torch", str(vggish_checkpoints["v1"]), batch_size=64, num_threads=1) as torch_engine:
        got = torch_engine.embed_wav_file(wav, fps, n_frames)
    assert expected.shape == got.shape == (n_frames, 128) and expected.std() > 0
    assert relative_difference(got, expected) < EQUALITY


@pytest.mark.slow  # a fresh process loads torch and reads the 288 MB release-format checkpoint
def test_a_torch_worker_embeds_from_the_release_checkpoint_without_tensorflow(vggish_checkpoints, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    write_wav(cache / "audio.wav", seconds=2.0)
    code = (
        "import sys; from base.preprocessing import preprocess; "
        "preprocess._init_vggish(sys.argv[1], None, 64, 1, 'cpu', 'torch'); "
        "preprocess.vggish_stage(sys.argv[2], 10.0, 20); "
        "assert 'tensorflow' not in sys.modules, 'TensorFlow imported'"
    )
    result = subprocess.run([sys.executable, "-c", code, str(vggish_checkpoints["v1"]), str(cache)],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert np.load(cache / "vggish.npy").shape == (20, 128)


TINY_DEMO = DemoConfig(demo_n_train_videos=1, demo_n_validation_videos=1, demo_n_test_videos=0,
                       demo_min_seconds=3.0, demo_max_seconds=4.0)


@pytest.mark.slow  # two preprocessing runs (spawned workers)
def test_preprocessing_with_the_torch_engine_writes_tfs_vggish_npy(vggish_checkpoints, tmp_path):
    database = demo.make_demo_database(tmp_path / "Affwild2", TINY_DEMO, quiet=True)
    outputs = {engine: tmp_path / f"out_{engine}" for engine in VGGISH_ENGINES}
    for engine, output in outputs.items():
        argv = ["--database", str(database), "--output", str(output), "--jobs", "1", "--quiet",
                "--vggish-checkpoint", str(vggish_checkpoints["v2"]), "--vggish-engine", engine]
        assert run_cli(preprocessing.main, argv) == 0
    trials = sorted(p.name for p in (outputs["tf"] / "npy_data").iterdir())
    assert len(trials) == 2
    for trial in trials:
        folders = {engine: output / "npy_data" / trial for engine, output in outputs.items()}
        expected, got = (np.load(folders[engine] / "vggish.npy") for engine in VGGISH_ENGINES)
        assert expected.shape == got.shape and expected.shape[1] == 128 and expected.std() > 0
        assert relative_difference(got, expected) < EQUALITY, trial
        for name in ("mfcc", "egemaps", "frame", "label"):  # the engine changes nothing else
            np.testing.assert_array_equal(np.load(folders["torch"] / f"{name}.npy"),
                                          np.load(folders["tf"] / f"{name}.npy"), err_msg=f"{trial} {name}")
        assert json.loads((folders["torch"] / "meta.json").read_text())["n"] == len(expected)
