"""Tests of the model package: IR-50 layout and weights, TCN, fusion, variants, freezing."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch.nn.utils import parametrize

from base.errors import UserError
from configs import Config, ModelConfig, TrainConfig, to_dict
from model import (
    IR50,
    RELEASE_GROUPS,
    LeaderFollowerModel,
    UnimodalModel,
    assemble_model,
    build_model,
    embed_frames,
    load_backbone,
    plan_modalities,
    save_authors_checkpoint,
)
from model.freezing import release_groups_for
from model.fusion import LeaderFollowerFusion, attend_across_modalities
from model.ir50 import Subsample
from model.tcn import TemporalConvNet, causal_padding

# tiny models run fastest on one thread (and do not suffer from a busy machine)
pytestmark = pytest.mark.usefixtures("one_torch_thread")

VARIANTS = {
    "frame": ("frame",),
    "frame_vggish_mfcc": ("frame", "vggish", "mfcc"),
    "frame_vggish_mfcc_egemaps": ("frame", "vggish", "mfcc", "egemaps"),
    "frame_flm_fau": ("frame", "flm", "fau"),
    "mfcc": ("mfcc",),
}
MODES = ("ir", "ir_se")
# The backbone mode only matters where a frame modality is read.
VARIANT_MODES = [(v, m) for v in VARIANTS for m in MODES if "frame" in VARIANTS[v] or m == "ir"]
FEATURE_DIMS = {"vggish": 128, "mfcc": 39, "egemaps": 23, "flm": 136, "fau": 17}
N_CLIPS, N_STEPS = 2, 3
CHUNK_SIZE = 4  # 6 frames per batch -> two backbone passes of 3


def make_inputs(modalities: tuple[str, ...], n_clips: int = N_CLIPS, n_steps: int = N_STEPS,
                seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    inputs = {}
    for name in modalities:
        if name == "frame":
            inputs[name] = torch.rand(n_clips, n_steps, 3, 40, 40, generator=generator) * 2 - 1
        else:
            inputs[name] = torch.randn(n_clips, n_steps, FEATURE_DIMS[name], generator=generator)
    return inputs


def make_config(modalities: tuple[str, ...], mode: str = "ir", **overrides) -> ModelConfig:
    settings = {"random_backbone": True, "backbone_chunk_size": CHUNK_SIZE, **overrides}
    return ModelConfig(modality=modalities, backbone_mode=mode, **settings)


@pytest.fixture(scope="module")
def backbones() -> dict[str, IR50]:
    """One random IR-50 per mode, built once (construction costs about a second)."""
    torch.manual_seed(0)
    return {mode: IR50(mode).eval() for mode in MODES}


@pytest.fixture(scope="module")
def models(backbones):
    """Lazily built model per (variant, mode), emotion 'both' (two outputs)."""
    cache: dict[tuple[str, str], torch.nn.Module] = {}

    def get(variant: str, mode: str = "ir"):
        if (variant, mode) not in cache:
            modalities = VARIANTS[variant]
            backbone = copy.deepcopy(backbones[mode]) if "frame" in modalities else None
            torch.manual_seed(1)
            cache[variant, mode] = assemble_model(make_config(modalities, mode, emotion="both"), backbone)
        return cache[variant, mode]

    return get


@pytest.fixture(scope="module")
def authors_files(backbones, tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("authors")
    return {mode: str(save_authors_checkpoint(backbones[mode], folder / f"res50_{mode}.pth")) for mode in MODES}


# ----------------------------------------------------------------------------- IR-50 backbone


def test_ir50_key_layout_matches_arcface():
    state = IR50("ir_se").state_dict()
    expected_shapes = {
        "input_layer.0.weight": (64, 3, 3, 3),
        "input_layer.1.running_var": (64,),
        "input_layer.2.weight": (64,),  # PReLU
        "body.0.res_layer.0.weight": (64,),
        "body.0.res_layer.1.weight": (64, 64, 3, 3),
        "body.0.res_layer.5.fc1.weight": (4, 64, 1, 1),  # SE, reduction 16
        "body.0.res_layer.5.fc2.weight": (64, 4, 1, 1),
        "body.3.shortcut_layer.0.weight": (128, 64, 1, 1),  # first unit of stage 2
        "body.7.shortcut_layer.1.running_mean": (256,),  # first unit of stage 3
        "body.21.shortcut_layer.0.weight": (512, 256, 1, 1),  # first unit of stage 4
        "body.23.res_layer.3.weight": (512, 512, 3, 3),
        "output_layer.0.weight": (512,),
        "output_layer.3.weight": (512, 512 * 5 * 5),
        "output_layer.4.running_var": (512,),
    }
    for key, shape in expected_shapes.items():
        assert tuple(state[key].shape) == shape, key
    assert {int(k.split(".")[1]) for k in state if k.startswith("body.")} == set(range(24))
    assert not any(k.startswith(("body.0.shortcut_layer", "body.4.shortcut_layer")) for k in state)  # parameter-free
    assert not any(".fc1." in k for k in IR50("ir").state_dict())


def with_max_pool_shortcuts(backbone: IR50) -> IR50:
    """A copy with the authors' parameter-free shortcut, ``MaxPool2d(1, stride)``, where ours subsamples."""
    old = copy.deepcopy(backbone)
    for unit in old.body:
        if isinstance(unit.shortcut_layer, Subsample):
            unit.shortcut_layer = torch.nn.MaxPool2d(1, unit.shortcut_layer.stride)
    return old


@pytest.mark.parametrize(("mode", "channels_last"), [("ir", False), ("ir", True), ("ir_se", False)])
def test_strided_slice_shortcut_equals_the_authors_max_pool_bit_for_bit(backbones, mode, channels_last):
    new = copy.deepcopy(backbones[mode])
    old = with_max_pool_shortcuts(new)
    assert sum(isinstance(unit.shortcut_layer, torch.nn.MaxPool2d) for unit in old.body) == 21  # of 24 units
    assert list(old.state_dict()) == list(new.state_dict())  # same keys, same order
    old.load_state_dict(new.state_dict(), strict=True)
    if channels_last:
        new, old = new.to(memory_format=torch.channels_last), old.to(memory_format=torch.channels_last)
    frames = torch.rand(3, 3, 40, 40, generator=torch.Generator().manual_seed(5)) * 2 - 1
    if channels_last:
        frames = frames.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert (new(frames) - old(frames)).abs().max().item() == 0.0


@pytest.mark.parametrize("side", [5, 10, 11, 56])
def test_strided_subsampling_equals_a_1x1_max_pool(side):
    # 40 px faces subsample with stride 1 only; 112 px ones (ArcFace) use stride 2 in body.0
    x = torch.randn(2, 4, side, side, generator=torch.Generator().manual_seed(side))
    x[0, 0, 0, 0] = float("nan")
    for stride in (1, 2):
        for tensor in (x, x.contiguous(memory_format=torch.channels_last)):
            expected = torch.nn.MaxPool2d(1, stride)(tensor)
            got = Subsample(stride)(tensor)
            assert got.shape == expected.shape and torch.equal(got.nan_to_num(7.0), expected.nan_to_num(7.0))
    shortcut = IR50("ir", input_size=112).body[0].shortcut_layer
    assert isinstance(shortcut, Subsample) and shortcut.stride == 2


def test_ir50_body_maps_40px_faces_to_5x5(backbones):
    with torch.no_grad():
        feature_map = backbones["ir"].body(backbones["ir"].input_layer(torch.zeros(1, 3, 40, 40)))
    assert feature_map.shape == (1, 512, 5, 5)


def test_ir50_supports_112px_faces():
    backbone = IR50("ir", input_size=112).eval()
    assert backbone.output_layer[3].in_features == 512 * 7 * 7
    with torch.no_grad():
        assert backbone(torch.zeros(2, 3, 112, 112)).shape == (2, 512)
    with pytest.raises(ValueError, match="40, 112"):
        IR50("ir", input_size=48)


@pytest.mark.parametrize("mode", MODES)
def test_embeddings_are_l2_normalised(backbones, mode):
    with torch.no_grad():
        embeddings = backbones[mode](torch.rand(3, 3, 40, 40) * 2 - 1)
    assert embeddings.shape == (3, 512)
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(3))


def test_chunked_backbone_equals_unchunked(backbones):
    frames = make_inputs(("frame",), n_clips=2, n_steps=3)["frame"]
    with torch.no_grad():
        whole = embed_frames(backbones["ir"], frames, chunk_size=100)
        chunked = embed_frames(backbones["ir"], frames, chunk_size=2)
    assert whole.shape == (2, 3, 512)
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-5)


def test_padded_frames_skip_the_backbone_without_changing_valid_outputs(backbones, models):
    frames = make_inputs(("frame",), n_clips=2, n_steps=3)["frame"]
    valid = torch.tensor([[True, True, True], [True, False, False]])  # clip 2 is zero-padded
    calls = []
    hook = backbones["ir"].input_layer.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    try:
        with torch.no_grad():
            whole = embed_frames(backbones["ir"], frames, chunk_size=100)
            masked = embed_frames(backbones["ir"], frames, chunk_size=100, valid=valid)
    finally:
        hook.remove()
    assert calls == [6, 4], "only the 4 valid frames go through the backbone"
    torch.testing.assert_close(masked[valid], whole[valid], atol=1e-5, rtol=1e-5)
    assert masked[~valid].abs().max() == 0
    model = models("frame_vggish_mfcc").eval()
    inputs = make_inputs(VARIANTS["frame_vggish_mfcc"])
    with torch.no_grad():
        plain = model(inputs)
        with_mask = model({**inputs, "mask": valid})
    # causal TCNs: outputs at valid steps (all before the padding) do not depend on padded frames
    torch.testing.assert_close(with_mask[valid], plain[valid], atol=1e-5, rtol=1e-5)


def test_channels_last_backbone_gives_same_embeddings(backbones):
    frames = make_inputs(("frame",), n_clips=1, n_steps=3)["frame"]
    channels_last = copy.deepcopy(backbones["ir"]).to(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(
            embed_frames(channels_last, frames, 8), embed_frames(backbones["ir"], frames, 8), atol=1e-5, rtol=1e-5
        )


# ----------------------------------------------------------------------------- weights


@pytest.mark.parametrize("mode", MODES)
def test_authors_checkpoint_loads_strictly_and_reproduces_embeddings(backbones, authors_files, mode):
    saved = torch.load(authors_files[mode], weights_only=True)
    assert "backbone.input_layer.0.weight" in saved and "backbone.body.23.res_layer.4.running_mean" in saved
    assert saved["logits.weight"].shape == (8, 512) and saved["logits.bias"].shape == (8,)
    assert len(saved) == len(backbones[mode].state_dict()) + 2

    loaded = load_backbone(authors_files[mode], mode)
    frames = torch.rand(2, 3, 40, 40) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded(frames), backbones[mode](frames), atol=0, rtol=0)
    assert not loaded.training


class _AuthorsVisualBackbone(torch.nn.Module):
    """The wrapper the authors save ``res50_ir_0.887.pth`` from and load it into, strictly (ABAW2
    ``model/model.py``, ABAW3 ``models/backbone.py`` ``VisualBackbone``): the ArcFace backbone under
    ``backbone`` and an 8-class ``logits`` Linear beside it."""

    def __init__(self, backbone: IR50) -> None:
        super().__init__()
        self.backbone = backbone
        self.logits = torch.nn.Linear(512, 8)


def test_authors_visual_backbone_layout_loads_strictly(backbones, tmp_path):
    trained = copy.deepcopy(backbones["ir"])
    generator = torch.Generator().manual_seed(3)
    for name, buffer in trained.named_buffers():  # statistics other than the defaults must travel too
        if name.endswith(("running_mean", "running_var")):
            buffer.copy_(torch.rand(buffer.shape, generator=generator) + 0.5)
    state = _AuthorsVisualBackbone(trained).state_dict()
    # Names as the authors' modules give them (hand-checked against their arcface_model.Backbone).
    assert {"backbone.input_layer.0.weight", "backbone.input_layer.2.weight", "backbone.body.3.shortcut_layer.0.weight",
            "backbone.body.21.shortcut_layer.1.running_var", "backbone.body.23.res_layer.2.weight",
            "backbone.output_layer.0.weight", "backbone.output_layer.4.num_batches_tracked",
            "logits.weight", "logits.bias"} <= set(state)
    assert "backbone.body.0.shortcut_layer.0.weight" not in state  # 64 -> 64: a parameter-free max-pool
    assert state["backbone.output_layer.3.weight"].shape == (512, 512 * 5 * 5)
    assert set(state) == {f"backbone.{k}" for k in backbones["ir"].state_dict()} | {"logits.weight", "logits.bias"}
    path = tmp_path / "res50_ir_0.887.pth"
    torch.save(state, path)
    loaded = load_backbone(path, "ir")
    assert set(loaded.state_dict()) == {k.removeprefix("backbone.") for k in state if k.startswith("backbone.")}
    frames = torch.rand(3, 3, 40, 40) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded(frames), trained(frames), atol=0, rtol=0)
        assert not torch.allclose(loaded(frames), backbones["ir"](frames))


def test_bare_backbone_state_dict_loads(backbones, tmp_path):
    path = tmp_path / "bare.pth"
    torch.save(backbones["ir"].state_dict(), path)
    loaded = load_backbone(path, "ir")
    for key, value in backbones["ir"].state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_state_dict_without_batch_counters_loads(backbones, tmp_path):
    # Files written before PyTorch 0.4.1 lack num_batches_tracked.
    path = tmp_path / "old.pth"
    state = {k: v for k, v in backbones["ir"].state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, path)
    loaded = load_backbone(path, "ir")
    assert torch.equal(loaded.output_layer[3].weight, backbones["ir"].output_layer[3].weight)


def test_our_checkpoint_gives_its_backbone_to_build_model(models, tmp_path):
    trained = models("frame_vggish_mfcc", "ir")
    path = tmp_path / "best.pth"
    torch.save({"model": trained.state_dict(), "config": to_dict(Config()), "epoch": 3}, path)
    config = Config(model=make_config(("frame",), backbone_checkpoint=str(path), random_backbone=False))
    rebuilt = build_model(config)
    assert isinstance(rebuilt, UnimodalModel)
    for key, value in trained.backbone.state_dict().items():
        assert torch.equal(rebuilt.backbone.state_dict()[key], value), key


def test_wrong_mode_file_names_the_mode(authors_files):
    with pytest.raises(UserError, match=r"unexpected keys 48 \(body\.0\.res_layer\.5\.fc1\.weight.*ir_se"):
        load_backbone(authors_files["ir_se"], "ir")
    with pytest.raises(UserError, match=r"missing keys 48 .*backbone-mode ir$"):
        load_backbone(authors_files["ir"], "ir_se")


def test_foreign_state_dict_is_rejected(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(10, 2048)}, path)
    with pytest.raises(UserError, match=r"missing keys \d+ \(input_layer\.0\.weight.*unexpected keys 2 \(conv1"):
        load_backbone(path, "ir")


def test_shape_mismatch_is_named(backbones, tmp_path):
    path = tmp_path / "face112.pth"
    state = dict(backbones["ir"].state_dict())
    state["output_layer.3.weight"] = torch.zeros(512, 512 * 7 * 7)
    torch.save(state, path)
    with pytest.raises(UserError, match=r"shapes differ .*output_layer\.3\.weight \(512, 25088\) vs \(512, 12800\)"):
        load_backbone(path, "ir")


def test_truncated_or_foreign_file_is_rejected(tmp_path):
    whole = tmp_path / "whole.pth"
    torch.save({"input_layer.0.weight": torch.zeros(64, 3, 3, 3)}, whole)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(whole.read_bytes()[:200])
    text = tmp_path / "notes.pth"
    text.write_text("not weights")
    for path in (truncated, text):
        with pytest.raises(UserError, match="truncated or not a PyTorch weights file"):
            load_backbone(path, "ir")
    with pytest.raises(UserError, match="does not exist"):
        load_backbone(tmp_path / "absent.pth", "ir")


def test_checkpoint_without_backbone_is_rejected(models, tmp_path):
    path = tmp_path / "audio_only.pth"
    torch.save({"model": models("mfcc").state_dict()}, path)
    with pytest.raises(UserError, match="without a backbone"):
        load_backbone(path, "ir")


def test_no_weights_needs_random_backbone_flag():
    for path in (None, ""):
        with pytest.raises(UserError, match=r"issue #7.*--backbone-checkpoint FILE.*--random-backbone"):
            load_backbone(path, "ir")
    with pytest.raises(UserError, match="--random-backbone"):
        build_model(ModelConfig(modality=("frame",)))
    assert isinstance(load_backbone(None, "ir_se", allow_random=True), IR50)


# ----------------------------------------------------------------------------- TCN


def test_causal_padding_values():
    assert causal_padding(kernel_size=5, dilation=1) == 4
    assert causal_padding(kernel_size=5, dilation=8) == 32


def test_tcn_layout():
    tcn = TemporalConvNet(512, (128, 128, 128, 128), kernel_size=5, dropout=0.1)
    convs = [block.net[0].conv for block in tcn.blocks]
    assert [conv.dilation[0] for conv in convs] == [1, 2, 4, 8]
    assert all(parametrize.is_parametrized(conv, "weight") for conv in convs)
    assert isinstance(tcn.blocks[0].residual, torch.nn.Conv1d) and tcn.blocks[0].residual.kernel_size == (1,)
    assert all(isinstance(block.residual, torch.nn.Identity) for block in tcn.blocks[1:])
    assert tcn(torch.randn(2, 7, 512)).shape == (2, 7, 128)


def test_tcn_is_causal_with_the_expected_receptive_field():
    torch.manual_seed(0)
    # float64: the influence of the farthest step passes through 8 corner weights and is tiny
    tcn = TemporalConvNet(3, (4, 4, 4, 4), kernel_size=5).double().eval()
    assert tcn.receptive_field == 1 + 2 * 4 * (1 + 2 + 4 + 8)  # 121 steps
    x = torch.randn(1, 130, 3, dtype=torch.float64)
    changed_at_0 = x.clone()
    changed_at_0[:, 0] += 5.0
    changed_at_60 = x.clone()
    changed_at_60[:, 60] += 5.0
    with torch.no_grad():
        y, y0, y60 = tcn(x), tcn(changed_at_0), tcn(changed_at_60)
    assert torch.equal(y[:, :60], y60[:, :60])  # nothing sees the future
    assert not torch.equal(y[:, 60], y60[:, 60])
    assert not torch.equal(y[:, 120], y0[:, 120])  # step 120 still sees step 0
    assert torch.equal(y[:, 121:], y0[:, 121:])  # step 121 does not


# ----------------------------------------------------------------------------- fusion


def test_attention_on_hand_computed_values():
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    values = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    attended, weights = attend_across_modalities(keys, queries, values)
    own = 1.0 / (1.0 + math.exp(-1.0 / math.sqrt(2.0)))  # softmax([1/sqrt(2), 0])[0]
    torch.testing.assert_close(weights, torch.tensor([[own, 1 - own], [1 - own, own]]))
    expected_first = own * values[0] + (1 - own) * values[1]
    torch.testing.assert_close(attended[0], expected_first)


@pytest.mark.parametrize("quirk", [False, True])
def test_fusion_computes_queries_from_the_right_source(quirk):
    torch.manual_seed(0)
    fusion = LeaderFollowerFusion(leader_dim=6, follower_dims=(2, 2), fusion_dim=2, quirk=quirk)
    leader, followers = torch.randn(1, 4, 6), [torch.randn(1, 4, 2), torch.randn(1, 4, 2)]
    features, weights = fusion(leader, followers, return_attention=True)
    assert features.shape == (1, 4, 6 + 3 * 2)
    keys, queries = [], []
    for index, stream in enumerate([leader, *followers]):
        key = fusion.keys[index](stream)
        source = key if (quirk and index > 0) else stream  # quirk: a follower's query reads its key
        keys.append(key)
        queries.append(fusion.queries[index](source))
    scores = torch.stack(keys, -2) @ torch.stack(queries, -2).transpose(-1, -2) / math.sqrt(2)
    torch.testing.assert_close(weights, torch.softmax(scores, dim=-1))
    torch.testing.assert_close(features[..., :6], leader)


def test_fusion_quirk_changes_outputs_for_the_same_weights():
    default = assemble_model(make_config(("mfcc", "vggish", "egemaps"), fusion_quirk=False), None).eval()
    quirky = assemble_model(make_config(("mfcc", "vggish", "egemaps"), fusion_quirk=True), None).eval()
    quirky.load_state_dict(default.state_dict(), strict=True)  # same shapes: followers are 32 wide
    inputs = make_inputs(("mfcc", "vggish", "egemaps"))
    with torch.no_grad():
        assert not torch.allclose(default(inputs), quirky(inputs))
    assert not default.fusion.quirk and quirky.fusion.quirk
    assert not any(isinstance(module, torch.nn.GroupNorm) for module in default.modules())  # no unused layers


def test_model_keys_left_to_the_recipe_follow_it():
    authors = assemble_model(make_config(("mfcc", "vggish")), None)  # a model section alone: authors
    assert authors.fusion.quirk and authors.frozen_batchnorm == "train"
    corrected = assemble_model(Config(model=make_config(("mfcc", "vggish")), train=TrainConfig(recipe="corrected")),
                               None)
    assert not corrected.fusion.quirk and corrected.frozen_batchnorm == "eval"
    explicit = Config(model=make_config(("mfcc", "vggish"), fusion_quirk=False), train=TrainConfig(recipe="authors"))
    assert not assemble_model(explicit, None).fusion.quirk  # an explicit key wins over the recipe


# ----------------------------------------------------------------------------- variants


def test_modality_plan_picks_the_leader():
    plan = plan_modalities(("vggish", "frame", "mfcc"))
    assert plan.leader.value == "frame" and [m.value for m in plan.followers] == ["vggish", "mfcc"]
    assert plan_modalities(("mfcc",)).followers == ()
    assert plan_modalities(("mfcc", "vggish")).leader.value == "mfcc"
    with pytest.raises(UserError, match="twice"):
        plan_modalities(("mfcc", "mfcc"))


@pytest.mark.parametrize(("variant", "mode"), VARIANT_MODES)
def test_output_shape_and_attention(models, variant, mode):
    model = models(variant, mode).eval()
    inputs = make_inputs(VARIANTS[variant])
    n_modalities = len(VARIANTS[variant])
    with torch.no_grad():
        if n_modalities == 1:
            assert isinstance(model, UnimodalModel)
            outputs = model(inputs)
        else:
            assert isinstance(model, LeaderFollowerModel)
            outputs, weights = model.forward_with_attention(inputs)
            assert weights.shape == (N_CLIPS, N_STEPS, n_modalities, n_modalities)
            torch.testing.assert_close(weights.sum(dim=-1), torch.ones(N_CLIPS, N_STEPS, n_modalities))
            assert model.head.in_features == 128 + n_modalities * 32
    assert outputs.shape == (N_CLIPS, N_STEPS, 2)
    assert torch.isfinite(outputs).all()


@pytest.mark.parametrize(
    ("emotion", "head", "output_dim"), [("valence", "sh", 1), ("arousal", "mh", 2), ("both", "sh", 2)]
)
def test_output_dim_follows_emotion_and_head(emotion, head, output_dim):
    model = build_model(make_config(("mfcc",), emotion=emotion, head=head))
    assert model(make_inputs(("mfcc",))).shape == (N_CLIPS, N_STEPS, output_dim)


def test_missing_input_is_named(models):
    with pytest.raises(KeyError, match="vggish"):
        models("frame_vggish_mfcc")(make_inputs(("frame", "mfcc")))


def test_invalid_model_settings_are_user_errors():
    with pytest.raises(UserError, match="crop_size"):
        build_model(make_config(("frame",), crop_size=48))
    with pytest.raises(UserError, match="cnn1d_embedding_dim"):
        build_model(make_config(("frame",), cnn1d_embedding_dim=256))
    with pytest.raises(UserError, match="follower_mode"):
        build_model(make_config(("mfcc",), follower_mode="concat"))


def test_build_model_accepts_the_whole_config():
    model = build_model(Config(model=make_config(("mfcc", "vggish"))))
    assert isinstance(model, LeaderFollowerModel) and model.modalities == ("mfcc", "vggish")


@pytest.mark.slow
def test_autocast_bf16_forward_is_finite(models):
    model = models("frame_vggish_mfcc", "ir").eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = model(make_inputs(("frame", "vggish", "mfcc")))
    assert outputs.shape == (N_CLIPS, N_STEPS, 2) and torch.isfinite(outputs.float()).all()


# ----------------------------------------------------------------------------- freezing


def test_release_groups_name_the_recipe_order():
    assert [g.name for g in RELEASE_GROUPS] == ["backbone.output_layer", "stage4", "stage3_last3"]
    assert RELEASE_GROUPS[1].module_names == ("body.21", "body.22", "body.23")
    assert RELEASE_GROUPS[2].module_names == ("body.18", "body.19", "body.20")
    assert release_groups_for("ir", "authors") == RELEASE_GROUPS
    assert release_groups_for("ir_se", "three_units") == RELEASE_GROUPS
    authors_se = release_groups_for("ir_se", "authors")
    assert authors_se[:2] == RELEASE_GROUPS[:2] and authors_se[2].module_names == ("body.19", "body.20")


@pytest.mark.parametrize(("mode", "slices"), [("ir", [(4, 10), (163, 187), (142, 163)]),
                                               ("ir_se", [(4, 10), (205, 235), (187, 205)])])
def test_authors_release_groups_are_their_parameter_slices(backbones, mode, slices):
    # base/parameter_control.py of the authors releases model.parameters()[a:b]; the backbone's
    # parameters come first in their model, so the slices index the backbone's parameter list.
    # their Backbone registers input_layer, output_layer, then body (units in the same inner order as ours)
    rank = {"input_layer": 0, "output_layer": 1, "body": 2}
    names = sorted((name for name, _ in backbones[mode].named_parameters()), key=lambda n: rank[n.split(".")[0]])
    for group, (first, stop) in zip(release_groups_for(mode, "authors"), slices):
        expected = set(names[first:stop])
        ours = {n for n in names if any(n.startswith(f"{module}.") for module in group.module_names)}
        assert ours == expected, group.name


def assert_gradients_follow_release(model, inputs, n_released: int) -> None:
    model.release_groups(n_released)
    model.train()
    model.zero_grad(set_to_none=True)
    model(inputs).square().mean().backward()
    released = tuple(f"backbone.{name}." for g in model.groups[:n_released] for name in g.module_names)
    for name, parameter in model.named_parameters():
        should_train = not name.startswith("backbone.") or name.startswith(released)
        assert parameter.requires_grad == should_train, name
        assert (parameter.grad is not None) == should_train, name
    assert model.n_released == n_released
    assert sum(p.numel() for p in model.trainable_parameters()) == sum(
        p.numel() for p in model.parameters() if p.grad is not None
    )


@pytest.mark.parametrize(("variant", "mode"), VARIANT_MODES)
def test_backward_reaches_only_released_parameters(models, variant, mode):
    model = models(variant, mode)
    n_groups = len(model.release_group_names)
    assert n_groups == (3 if "frame" in VARIANTS[variant] else 0)
    assert_gradients_follow_release(model, make_inputs(VARIANTS[variant]), min(1, n_groups))


@pytest.mark.slow
@pytest.mark.parametrize("n_released", [0, 2, 3])
def test_backward_at_every_release_level(models, n_released):
    assert_gradients_follow_release(models("frame_vggish_mfcc", "ir_se"), make_inputs(VARIANTS["frame_vggish_mfcc"]),
                                    n_released)


def test_release_groups_out_of_range(models):
    with pytest.raises(ValueError, match="3 release groups, cannot release 4"):
        models("frame").release_groups(4)
    audio_only = models("mfcc")
    assert audio_only.release_group_names == () and audio_only.n_released == 0
    audio_only.release_groups(0)
    with pytest.raises(ValueError, match="0 release groups"):
        audio_only.release_groups(1)


def changed_running_statistics(model, modalities: tuple[str, ...]) -> set[str]:
    """Backbone BatchNorm buffers that one no-grad forward pass in the model's current mode changes."""
    before = {k: v.clone() for k, v in model.backbone.state_dict().items() if "running" in k}
    with torch.no_grad():
        model(make_inputs(modalities))
    after = model.backbone.state_dict()
    return {k for k in before if not torch.equal(before[k], after[k])}


def test_frozen_batchnorm_statistics_stay_fixed_in_train_mode(backbones):
    torch.manual_seed(1)
    model = assemble_model(make_config(VARIANTS["frame_vggish_mfcc"], "ir", frozen_batchnorm="eval"),
                           copy.deepcopy(backbones["ir"]))
    model.release_groups(1)
    model.train()
    assert model.tcns.training and model.backbone.output_layer.training
    assert not model.backbone.input_layer.training and not model.backbone.body[23].training
    changed = changed_running_statistics(model, ("frame", "vggish", "mfcc"))
    assert changed == {f"output_layer.{i}.running_{s}" for i in (0, 4) for s in ("mean", "var")}
    model.eval()
    assert not model.backbone.output_layer.training and not model.tcns.training


def test_frozen_batchnorm_trains_under_the_authors_recipe(backbones):
    # their trainer calls model.train() on the whole model: every BatchNorm uses batch statistics
    torch.manual_seed(1)
    model = assemble_model(make_config(VARIANTS["frame"], "ir", frozen_batchnorm="train"),
                           copy.deepcopy(backbones["ir"]))
    model.release_groups(1)
    model.train()
    assert all(module.training for module in model.modules())
    every = {k for k in model.backbone.state_dict() if "running" in k}
    assert changed_running_statistics(model, ("frame",)) == every  # frozen units' statistics move too


def test_wrapped_and_authors_state_dicts_are_unwrapped():
    from model.weights import backbone_state_dict

    weight, head = torch.zeros(2), torch.ones(8, 512)
    assert backbone_state_dict({"module.backbone.input_layer.0.weight": weight, "module.logits.weight": head}) == {
        "input_layer.0.weight": weight
    }
    compiled = {"model": {"_orig_mod.backbone.body.0.x": weight, "_orig_mod.head.weight": head}, "epoch": 1}
    assert backbone_state_dict(compiled) == {"body.0.x": weight}
    # Keys beside the authors' backbone and head are kept, so that the checker reports them.
    assert set(backbone_state_dict({"backbone.a": weight, "extra.b": weight})) == {"a", "extra.b"}
    with pytest.raises(UserError, match="holds a list, not a state dict"):
        backbone_state_dict([weight])
