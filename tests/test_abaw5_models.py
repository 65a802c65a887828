"""The ABAW5 models (LFAN, CAN; SPEC-ABAW5 §3): parity with the authors' code, fusion equations,
parameter counts, release groups, the authors' state dicts, the audio backbone."""

from __future__ import annotations

import copy
import math
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from torch import nn

from base.errors import UserError
from configs import ModelConfig
from model import (
    CAN,
    LFAN,
    ChannelAttentionFusion,
    CrossModalAttention,
    blank_backbones,
    build_model,
    embed_patches,
    load_authors_state_dict,
)
from model.abaw5 import Abaw5Model
from model.attention_fusion import attend_per_head
from model.can import CanSettings
from model.lfan import LfanSettings
from model.tcn import TemporalConvNet
from model.weights import authors_keys
from tests import authors_abaw5_helpers as authors
from vggish.network import VGGish

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MODALITIES = ("frame", "logmel", "egemaps_functionals")
N_WINDOWS, N_STEPS = 2, 6  # 12 frames and patches through the backbones
PARITY_TOLERANCE = 1e-4

# SPEC-ABAW5 §3, their classes instantiated
TOTAL_PARAMETERS = {"lfan": 111_865_321, "can": 112_788_905}
PART_PARAMETERS = {
    "lfan": {"backbone": 37_283_520, "visual_logits": 4_104, "audio_backbone": 72_141_184, "tcns.frame": 2_215_296,
             "tcns.logmel": 139_104, "tcns.egemaps_functionals": 53_280, "tcn_norms": 384, "fusion": 28_224,
             "head": 225},
    "can": {"backbone": 37_283_520, "visual_logits": 4_104, "audio_backbone": 72_141_184, "tcns.frame": 2_379_648,
            "tcns.logmel": 481_088, "tcns.egemaps_functionals": 123_744, "tcn_norms": 448, "fusion": 176_896,
            "unused_conv": 49_280, "head": 768 + 147_840 + 385},
}
VISUAL_GROUP_PARAMETERS = (6_556_160, 13_115_392, 3_542_784)  # output_layer, body.21-23, body.18-20
AUDIO_GROUP_PARAMETERS = (524_416, 16_781_312, 50_335_744)  # embeddings.4, .2, .0


def make_config(name: str, modalities: tuple[str, ...] = MODALITIES, **overrides) -> ModelConfig:
    return ModelConfig(model_name=name, modality=modalities, random_backbone=True, **overrides)


def make_inputs(n_windows: int = N_WINDOWS, n_steps: int = N_STEPS, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "frame": torch.rand(n_windows, n_steps, 3, 40, 40, generator=generator) * 2 - 1,  # (B, T, 3, 40, 40)
        "logmel": torch.randn(n_windows, n_steps, 96, 64, generator=generator),  # (B, T, 96, 64)
        "egemaps_functionals": torch.randn(n_windows, n_steps, 88, generator=generator),  # (B, T, 88)
    }


@pytest.fixture(scope="module")
def models():
    """One LFAN and one CAN with random backbones, built lazily once (about 450 MB each)."""
    cache: dict[str, Abaw5Model] = {}

    def get(name: str) -> Abaw5Model:
        if name not in cache:
            torch.manual_seed(0)
            cache[name] = build_model(make_config(name))
        return cache[name]

    return get


def build_theirs(name: str) -> nn.Module:
    torch.manual_seed(0)
    return authors.build_lfan(N_STEPS) if name == "lfan" else authors.CAN()


def randomise_batchnorm(model: nn.Module, seed: int = 1) -> None:
    """BatchNorm affine parameters and running statistics away from their initial 1 / 0."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                shape = module.running_mean.shape
                module.running_mean.copy_(torch.randn(shape, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(shape, generator=generator) * 0.02 + 0.01)
                module.weight.copy_(torch.rand(shape, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(shape, generator=generator) * 0.1)


@contextmanager
def dropout_off(*modules: nn.Module):
    """Every dropout rate 0 (IR-50's output layer, TCNs, LFAN's fusion), restored after."""
    layers = [m for module in modules for m in module.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    rates = [layer.p for layer in layers]
    for layer in layers:
        layer.p = 0.0
    try:
        yield
    finally:
        for layer, rate in zip(layers, rates, strict=True):
            layer.p = rate


# ----------------------------------------------------------------------------- parity with the authors' models


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lfan", "can"])
def test_authors_state_dict_reproduces_their_outputs(models, tmp_path, name):
    theirs = build_theirs(name)
    randomise_batchnorm(theirs)
    path = tmp_path / "model_state_dict0.5.pth"  # what their trainer saves: torch.save(model.state_dict())
    torch.save(theirs.state_dict(), path)
    ours = models(name)
    load_authors_state_dict(ours, path)
    path.unlink()
    inputs = make_inputs()

    theirs.eval()
    ours.eval()
    with torch.no_grad():
        expected, actual = theirs(authors.their_inputs(inputs)), ours(inputs)
    assert actual.shape == expected.shape == (N_WINDOWS, N_STEPS, 1)
    assert expected.std() > 0.02  # outputs that tell weights apart
    torch.testing.assert_close(actual, expected, rtol=0, atol=PARITY_TOLERANCE)

    # train mode (their trainer: model.train() on the whole model), dropout 0: BatchNorm layers of
    # both backbones and the heads use batch statistics and update their running statistics
    theirs.train()
    ours.train()
    with dropout_off(theirs, ours):
        expected, actual = theirs(authors.their_inputs(inputs)), ours(inputs)
    torch.testing.assert_close(actual, expected, rtol=0, atol=PARITY_TOLERANCE)
    expected.square().sum().backward()
    actual.square().sum().backward()
    their_state, their_parameters = theirs.state_dict(), dict(theirs.named_parameters())
    for key, names in authors_keys(ours).items():
        if "running" in key:  # the running statistics after one training forward
            torch.testing.assert_close(ours.state_dict()[key], their_state[names[0]], rtol=1e-4, atol=1e-5,
                                       msg=lambda text, key=key: f"{key}: {text}")
    trainable = dict((n, p) for n, p in ours.named_parameters() if p.requires_grad)
    assert trainable, "the TCNs, fusion and head train from the start"
    for key, parameter in trainable.items():
        their_name = authors_keys(ours)[key][0]
        torch.testing.assert_close(parameter.grad, their_parameters[their_name].grad, rtol=1e-3, atol=1e-4,
                                   msg=lambda text, key=key: f"{key}: {text}")
    ours.zero_grad(set_to_none=True)


def test_logmel_layouts_give_the_same_patches():
    # their reader's ToTensor turns a (T, 96, 64) window into (64, T, 96); their model permutes it back
    ours = make_inputs()["logmel"]  # (B, T, 96, 64)
    their_input = authors.their_inputs(make_inputs())["logmel"]  # (B, 64, T, 96)
    batch_size, height, length, width = their_input.shape
    their_patches = their_input.permute((0, 2, 3, 1)).contiguous().view(-1, width, height)
    assert torch.equal(their_patches, ours.reshape(-1, 96, 64))  # frame-major: patch b * T + t


def test_their_tcn_equals_ours_with_element_dropout():
    torch.manual_seed(0)
    theirs = authors.TemporalConvNet(88, [64, 64, 32, 32], kernel_size=5, dropout=0.2)
    ours = TemporalConvNet(88, (64, 64, 32, 32), kernel_size=5, dropout=0.2, dropout_kind="element")
    assert all(isinstance(block.net[2], nn.Dropout) for block in ours.blocks)
    assert isinstance(TemporalConvNet(3, (4,)).blocks[0].net[2], nn.Dropout1d)  # ABAW2's default: whole channels
    for their_block, our_block in zip(theirs.network, ours.blocks, strict=True):
        for their_conv, our_conv in ((their_block.conv1, our_block.net[0].conv), (their_block.conv2, our_block.net[3].conv)):
            weights = our_conv.parametrizations.weight
            weights.original0.data.copy_(their_conv.weight_g)
            weights.original1.data.copy_(their_conv.weight_v)
            our_conv.bias.data.copy_(their_conv.bias)
        if their_block.downsample is not None:
            our_block.residual.load_state_dict(their_block.downsample.state_dict())
    x = torch.randn(2, 88, 40)
    torch.testing.assert_close(ours.eval()(x.transpose(1, 2)), theirs.eval()(x).transpose(1, 2))


# ----------------------------------------------------------------------------- fusion equations on hand-sized tensors


def lfan_fusion_by_loops(streams: list[np.ndarray], qkv: list[tuple[np.ndarray, np.ndarray]], out_weight: np.ndarray,
                         out_bias: np.ndarray, num_heads: int) -> np.ndarray:
    """SPEC-ABAW5 §3 written out per step, head, modality pair and component (LayerNorm weight 1, bias 0)."""
    n_modalities = len(streams)
    width = qkv[0][0].shape[0] // 3  # modal_dim d
    s = width // num_heads
    n_steps = streams[0].shape[0]
    result = np.zeros((n_steps, n_modalities * width))
    for t in range(n_steps):
        u = [weight @ x[t] + bias for x, (weight, bias) in zip(streams, qkv, strict=True)]  # u_m, 3d values
        z = np.zeros(n_modalities * width)
        for h in range(num_heads):
            q = [u[m][3 * s * h: 3 * s * h + s] for m in range(n_modalities)]
            k = [u[m][3 * s * h + s: 3 * s * h + 2 * s] for m in range(n_modalities)]
            v = [u[m][3 * s * h + 2 * s: 3 * s * h + 3 * s] for m in range(n_modalities)]
            for i in range(n_modalities):
                scores = [sum(q[i][e] * k[j][e] for e in range(s)) / math.sqrt(s) for j in range(n_modalities)]
                exps = [math.exp(score - max(scores)) for score in scores]
                weights = [e / sum(exps) for e in exps]  # softmax over the key modality j
                for e in range(s):
                    attended = sum(weights[j] * v[j][e] for j in range(n_modalities)) + v[i][e]  # value residual
                    z[n_modalities * s * h + s * i + e] = attended  # head-major flatten
        o = out_weight @ z + out_bias  # no residual around o_proj
        result[t] = (o - o.mean()) / math.sqrt(o.var() + 1e-5)  # LayerNorm over M * d
    return result


def test_lfan_fusion_on_hand_sized_tensors():
    # 3 modalities of widths 2, 3, 1; d = 4 per modality, 2 heads of s = 2; 2 steps
    rng = np.random.default_rng(0)
    widths = (2, 3, 1)
    fusion = CrossModalAttention(widths, modal_dim=4, num_heads=2, dropout=0.0).double().eval()
    streams = [rng.integers(-2, 3, size=(2, w)).astype(float) for w in widths]
    qkv = [(rng.integers(-2, 3, size=(12, w)) / 2.0, rng.integers(-2, 3, size=12) / 4.0) for w in widths]
    out_weight, out_bias = rng.integers(-2, 3, size=(12, 12)) / 4.0, rng.integers(-2, 3, size=12) / 4.0
    with torch.no_grad():
        for layer, (weight, bias) in zip(fusion.qkv, qkv, strict=True):
            layer.weight.copy_(torch.from_numpy(weight))
            layer.bias.copy_(torch.from_numpy(bias))
        fusion.out.weight.copy_(torch.from_numpy(out_weight))
        fusion.out.bias.copy_(torch.from_numpy(out_bias))
        fused = fusion([torch.from_numpy(x)[None] for x in streams])  # B = 1
    expected = lfan_fusion_by_loops(streams, qkv, out_weight, out_bias, num_heads=2)
    np.testing.assert_allclose(fused[0].numpy(), expected, rtol=1e-10, atol=1e-12)


def test_lfan_attention_by_hand():
    # q = k = 0: every weight is 1/3, so each modality gets the mean value plus its own value
    values = torch.tensor([[1.0, 2.0], [4.0, 0.0], [-2.0, 1.0]])  # (M, s)
    attended, weights = attend_per_head(torch.zeros(3, 2), torch.zeros(3, 2), values)
    torch.testing.assert_close(weights, torch.full((3, 3), 1 / 3))
    torch.testing.assert_close(attended, torch.tensor([[2.0, 3.0], [5.0, 1.0], [-1.0, 2.0]]))
    # one key matching one query: softmax over keys j of q_i . k_j / sqrt(2)
    queries = torch.tensor([[1.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
    keys = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    attended, weights = attend_per_head(queries, keys, values)
    big = math.exp(2 / math.sqrt(2))
    torch.testing.assert_close(weights[0], torch.tensor([1, big, 1]) / (2 + big))
    torch.testing.assert_close(attended[0], (values[0] + big * values[1] + values[2]) / (2 + big) + values[0])


def test_lfan_fusion_flattens_head_major_without_residual_around_o_proj():
    fusion = CrossModalAttention((5, 5, 5), modal_dim=32, num_heads=2, dropout=0.0).eval()
    assert fusion.out.in_features == fusion.out.out_features == 96 and fusion.head_dim == 16
    assert all(layer.out_features == 96 for layer in fusion.qkv)
    assert all(torch.count_nonzero(layer.bias) == 0 for layer in (*fusion.qkv, fusion.out))  # zero at init
    with torch.no_grad():
        fusion.out.weight.zero_()  # o = b_o: the LayerNorm sees no trace of the streams
        fusion.out.bias.copy_(torch.arange(96.0))
        fused = fusion([torch.randn(1, 2, 5) for _ in range(3)])
    torch.testing.assert_close(fused, fusion.norm(torch.arange(96.0)).expand(1, 2, 96))


def test_can_attention_on_hand_sized_tensors():
    # 2 streams of widths 1 and 2, projected to d = 2: c = [p_1; p_2] (4 values), g = softmax(W c + b) * c
    fusion = ChannelAttentionFusion((1, 2), projection_dim=2).double()
    with torch.no_grad():
        fusion.projections[0].weight.copy_(torch.tensor([[1.0], [2.0]]))
        fusion.projections[0].bias.copy_(torch.tensor([0.0, -1.0]))
        fusion.projections[1].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, -1.0]]))
        fusion.projections[1].bias.zero_()
        fusion.gate.weight.copy_(torch.eye(4))
        fusion.gate.bias.copy_(torch.tensor([0.0, 0.0, 1.0, 0.0]))
        gated, weights = fusion([torch.tensor([[[1.0]]], dtype=torch.float64),
                                 torch.tensor([[[3.0, 2.0]]], dtype=torch.float64)], return_attention=True)
    c = np.array([1.0, 1.0, 3.0, -2.0])  # [1*1+0, 2*1-1; 3, -2]
    logits = c + np.array([0.0, 0.0, 1.0, 0.0])
    a = np.exp(logits) / np.exp(logits).sum()  # softmax over all 4 features
    np.testing.assert_allclose(weights[0, 0].numpy(), a, rtol=1e-12)
    np.testing.assert_allclose(gated[0, 0].numpy(), a * c, rtol=1e-12)
    with torch.no_grad():  # a zero gate weighs every feature 1/4
        fusion.gate.weight.zero_()
        fusion.gate.bias.zero_()
        gated = fusion([torch.tensor([[[1.0]]], dtype=torch.float64), torch.tensor([[[3.0, 2.0]]], dtype=torch.float64)])
    np.testing.assert_allclose(gated[0, 0].numpy(), c / 4, rtol=1e-12)


# ----------------------------------------------------------------------------- layout, counts, release


def _part(name: str) -> str:
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] == "tcns" else parts[0]


@pytest.mark.parametrize("name", ["lfan", "can"])
def test_parameter_counts_are_the_authors(models, name):
    model = models(name)
    assert sum(p.numel() for p in model.parameters()) == TOTAL_PARAMETERS[name]
    counts: dict[str, int] = {}
    for key, parameter in model.named_parameters():
        counts[_part(key)] = counts.get(_part(key), 0) + parameter.numel()
    assert counts == PART_PARAMETERS[name]


@pytest.mark.parametrize("name", ["lfan", "can"])
def test_release_groups_hold_the_authors_counts(models, name):
    model = models(name)
    assert model.release_group_names == ("output_layer+embeddings.4", "stage4+embeddings.2", "stage3_last3+embeddings.0")
    sizes = dict(model.named_parameters())
    for group, visual, audio in zip(model.groups, VISUAL_GROUP_PARAMETERS, AUDIO_GROUP_PARAMETERS, strict=True):
        per_backbone = {"backbone": 0, "audio_backbone": 0}
        for key, parameter in sizes.items():
            if any(key.startswith(f"{module}.") for module in group.module_names):
                per_backbone[key.split(".")[0]] += parameter.numel()
        assert per_backbone == {"backbone": visual, "audio_backbone": audio}, group.name
    head = TOTAL_PARAMETERS[name] - 37_287_624 - 72_141_184 - (49_280 if name == "can" else 0)  # conv_c stays frozen
    trainable = []
    for n_released in range(4):
        model.release_groups(n_released)
        trainable.append(sum(p.numel() for p in model.trainable_parameters()))
    released = np.cumsum([0, *(v + a for v, a in zip(VISUAL_GROUP_PARAMETERS, AUDIO_GROUP_PARAMETERS, strict=True))])
    assert trainable == [head + int(n) for n in released]
    model.release_groups(0)
    assert not any(p.requires_grad for p in (*model.backbone.parameters(), *model.audio_backbone.parameters(),
                                             *model.visual_logits.parameters()))


def test_release_groups_are_their_parameter_slices(models):
    # base/parameter_control.py releases model.spatial[modal].parameters()[a:b] for visual and audio together
    slices = {"visual": [(4, 10), (163, 187), (142, 163)], "audio": [(16, 18), (14, 16), (12, 14)]}
    with torch.device("meta"):
        theirs = {"visual": authors.VisualBackbone(), "audio": authors.AudioBackbone()}
    ours = models("lfan")
    to_ours = {names[0]: key for key, names in authors_keys(ours).items()}
    prefix = {"visual": "spatial.visual.", "audio": "spatial.audio."}
    for index, group in enumerate(ours.groups):
        expected = set()
        for modal, parameters in theirs.items():
            names = [prefix[modal] + n for n, _ in parameters.named_parameters()]
            expected |= {to_ours[n] for n in names[slice(*slices[modal][index])]}
        released = {key for key, _ in ours.named_parameters()
                    if any(key.startswith(f"{module}.") for module in group.module_names)}
        assert released == expected, group.name


@pytest.mark.parametrize("name", ["lfan", "can"])
def test_forward_and_backward_reach_only_released_parameters(models, name):
    model = models(name)
    model.release_groups(1)
    model.train()
    model.zero_grad(set_to_none=True)
    inputs = make_inputs(n_steps=3)
    outputs = model(inputs)
    assert outputs.shape == (N_WINDOWS, 3, 1) and outputs.abs().max() < 1  # tanh
    outputs.square().mean().backward()
    released = tuple(f"{module}." for module in model.groups[0].module_names)
    frozen_roots = ("backbone.", "audio_backbone.", "visual_logits.", "unused_conv.")
    for key, parameter in model.named_parameters():
        should_train = not key.startswith(frozen_roots) or key.startswith(released)
        assert parameter.requires_grad == should_train, key
        assert (parameter.grad is not None) == should_train, key
    model.zero_grad(set_to_none=True)
    model.release_groups(0)


def test_lfan_fusion_and_head_widths(models):
    lfan, can = models("lfan"), models("can")
    assert lfan.modalities == MODALITIES and lfan.stream_widths() == (128, 32, 32)
    assert lfan.head.in_features == 224 and lfan.fusion.out_dim == 96
    assert can.stream_widths() == (128, 64, 32) and can.fusion.out_dim == 384
    assert (can.head.fc1.in_features, can.head.fc2.in_features, can.head.norm.num_features) == (384, 384, 384)
    assert [b.net[2].p for b in lfan.tcns["frame"].blocks] == [0.1] * 4 and lfan.fusion.dropout.p == 0.1
    assert [b.net[2].p for b in can.tcns["logmel"].blocks] == [0.2] * 5
    assert all(isinstance(b.net[2], nn.Dropout) for tcn in (*lfan.tcns.values(), *can.tcns.values()) for b in tcn.blocks)


def test_attention_weights_are_exposed(models):
    with torch.no_grad():
        _, weights = models("lfan").eval().forward_with_attention(make_inputs(n_steps=2))
    assert weights.shape == (N_WINDOWS, 2, 2, 3, 3)  # (B, T, heads, query modality, key modality)
    torch.testing.assert_close(weights.sum(-1), torch.ones(N_WINDOWS, 2, 2, 3))


# ----------------------------------------------------------------------------- the audio backbone


@pytest.fixture(scope="module")
def vggish() -> VGGish:
    torch.manual_seed(0)
    return VGGish().eval()


def test_embed_patches_equals_vggish_forward_chunked_or_not(vggish):
    patches = torch.randn(2, 3, 96, 64)
    with torch.no_grad():
        expected = vggish(patches.reshape(6, 96, 64)).reshape(2, 3, 128)
        whole = embed_patches(vggish, patches, chunk_size=100)
        chunked = embed_patches(vggish, patches, chunk_size=4)  # passes of 3 and 3 patches
    torch.testing.assert_close(whole, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(chunked, expected, rtol=1e-5, atol=1e-5)


def test_embed_patches_trains_the_released_layers_only(vggish):
    network = copy.deepcopy(vggish).requires_grad_(False)
    network.embeddings[4].requires_grad_(True)
    patches = torch.randn(1, 5, 96, 64)
    calls = []
    hook = network.features[0].register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    try:
        embedded = embed_patches(network, patches, chunk_size=2)
    finally:
        hook.remove()
    assert calls == [2, 2, 1]  # the frozen convolutions in chunks, without autograd
    embedded.sum().backward()
    assert network.embeddings[4].weight.grad is not None and network.embeddings[2].weight.grad is None
    reference = copy.deepcopy(network)
    reference.embeddings[4].zero_grad(set_to_none=True)
    reference(patches[0]).sum().backward()  # VGGish.forward on all patches in one pass
    torch.testing.assert_close(network.embeddings[4].weight.grad, reference.embeddings[4].weight.grad,
                               rtol=1e-4, atol=1e-5)


def test_padded_patches_skip_vggish(vggish):
    patches = torch.randn(2, 3, 96, 64)
    valid = torch.tensor([[True, True, True], [True, False, False]])
    with torch.no_grad():
        whole = embed_patches(vggish, patches, chunk_size=100)
        masked = embed_patches(vggish, patches, chunk_size=100, valid=valid)
    torch.testing.assert_close(masked[valid], whole[valid], rtol=1e-5, atol=1e-5)
    assert masked[~valid].abs().max() == 0


# ----------------------------------------------------------------------------- building and the authors' files


def small(name: str) -> Abaw5Model:
    """A model without backbones (egemaps functionals only): the same names, a few hundred kB."""
    torch.manual_seed(0)
    return build_model(make_config(name, ("egemaps_functionals",)))


def their_state(model: Abaw5Model) -> dict[str, torch.Tensor]:
    """``model``'s weights under the authors' names, aliases included (as their trainer saves them)."""
    state = model.state_dict()
    return {their: state[key].clone() for key, names in authors_keys(model).items() for their in names}


def test_authors_keys_name_every_tensor_of_their_models():
    with torch.device("meta"):
        their_lfan, their_can = authors.LFAN(), authors.CAN()
        their_lfan.init()
        ours = {"lfan": build_model(make_config("lfan")), "can": build_model(make_config("can"))}
    for name, theirs in (("lfan", their_lfan), ("can", their_can)):
        mapped = {their for names in authors_keys(ours[name]).values() for their in names}
        assert mapped == set(theirs.state_dict()), name


def test_load_authors_state_dict_round_trip(tmp_path):
    source, target = small("lfan"), small("lfan")
    with torch.no_grad():
        for parameter in source.parameters():
            parameter.add_(1.0)
    path = tmp_path / "model_state_dict0.43.pth"
    torch.save({f"module.{k}": v for k, v in their_state(source).items()}, path)  # nn.DataParallel prefix
    load_authors_state_dict(target, path)
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.pop("regressor.bias"), r"missing keys 1 \(regressor.bias\)"),
        (lambda s: s.update({"extra.weight": torch.zeros(1)}), r"unexpected keys 1 \(extra.weight\)"),
        (lambda s: s.update({"regressor.weight": torch.zeros(2, 64)}),
         r"shapes differ \(file vs model\) for 1 \(regressor.weight \(2, 64\) vs \(1, 64\)\)"),
    ],
)
def test_authors_state_dict_mismatches_are_named(tmp_path, change, message):
    model = small("lfan")
    state = their_state(model)
    change(state)
    torch.save(state, tmp_path / "m.pth")
    with pytest.raises(UserError, match=f"does not fit this LFAN reading egemaps_functionals: {message}"):
        load_authors_state_dict(model, tmp_path / "m.pth")


def test_wrong_model_or_modalities_are_hinted(tmp_path):
    torch.save(their_state(small("can")), tmp_path / "can.pth")
    with pytest.raises(UserError, match="looks like a CAN state dict: pass --model-name can"):
        load_authors_state_dict(small("lfan"), tmp_path / "can.pth")
    lfan = build_model(make_config("lfan", ("logmel", "egemaps_functionals")))
    torch.save(their_state(small("lfan")), tmp_path / "lfan.pth")
    with pytest.raises(UserError, match="the file's TCNs are for the modalities egemaps_functionals"):
        load_authors_state_dict(lfan, tmp_path / "lfan.pth")


def test_unreadable_or_foreign_files(tmp_path):
    model = small("can")
    with pytest.raises(UserError, match="does not exist"):
        load_authors_state_dict(model, tmp_path / "none.pth")
    (tmp_path / "bad.pth").write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="could not be read"):
        load_authors_state_dict(model, tmp_path / "bad.pth")
    first_generation = build_model(ModelConfig(modality=("mfcc",)))
    with pytest.raises(UserError, match="fit --model-name lfan or can, not a UnimodalModel"):
        load_authors_state_dict(first_generation, tmp_path / "bad.pth")


def test_build_reads_vggish_pth_in_the_authors_layout(vggish, tmp_path):
    # their AudioBackbone wrapper saves backbone.features.* / backbone.embeddings.*: the prefix is dropped
    torch.save({f"backbone.{k}": v for k, v in vggish.state_dict().items()}, tmp_path / "vggish.pth")
    model = build_model(ModelConfig(model_name="can", modality=("logmel",),
                                    audio_backbone_checkpoint=str(tmp_path / "vggish.pth")))
    for key, value in vggish.state_dict().items():
        assert torch.equal(model.audio_backbone.state_dict()[key], value), key
    blank = blank_backbones(make_config("can", ("logmel", "frame")))
    assert isinstance(blank.audio, VGGish) and blank.visual is not None and blank.visual.input_size == 40


def test_build_needs_vggish_weights_or_random_backbone():
    with pytest.raises(UserError, match="no VGGish weights were given.*--audio-backbone-checkpoint"):
        build_model(ModelConfig(model_name="lfan", modality=("logmel",)))


def test_model_names_and_modalities_are_checked():
    with pytest.raises(UserError, match="--model-name lfan reads the modalities frame, logmel, egemaps_functionals"):
        build_model(make_config("lfan", ("frame", "mfcc")))
    with pytest.raises(UserError, match="logmel are read by the ABAW5 models: pass --model-name lfan or can"):
        build_model(make_config("2d1d", ("frame", "logmel")))


def test_leader_is_the_first_modality():
    lfan = build_model(make_config("lfan", ("egemaps_functionals", "logmel")))
    assert isinstance(lfan, LFAN) and lfan.modalities == ("egemaps_functionals", "logmel")
    assert lfan.head.in_features == 32 + 2 * 32 and lfan.release_group_names == ("embeddings.4", "embeddings.2",
                                                                                  "embeddings.0")
    can = build_model(make_config("can", ("egemaps_functionals",), emotion="both"))
    assert isinstance(can, CAN) and can.release_group_names == () and can.head.fc2.out_features == 2


def test_settings_carry_the_authors_constants():
    lfan, can = LfanSettings(), CanSettings()
    assert (lfan.temporal.kernel_size, lfan.temporal.dropout, lfan.modal_dim, lfan.num_heads, lfan.fusion_dropout) == (
        5, 0.1, 32, 2, 0.1)
    assert (can.temporal.kernel_size, can.temporal.dropout, can.projection_dim) == (5, 0.2, 128)
