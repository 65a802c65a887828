"""A transcription of the authors' ABAW5 models (sucv/ABAW3 at fbb305a), the reference of the parity tests.

Their classes with their module names, rewritten minimally: the weight files are not read (their
``load_visual_backbone`` / ``load_audio_backbone`` build ``VisualBackbone(mode='ir',
use_pretrained=False)`` and ``AudioBackbone()`` here, frozen as theirs), dead branches (SE units,
other depths, TCN attention) are left out, and ``VGGish.forward``'s ``torch.tensor(x)`` (a detached
copy of the input) is ``x.detach().clone()``. Sources:

- models/arcface_model.py: Flatten, l2_norm, bottleneck_IR, get_block(s), Backbone
- models/backbone.py: VGG, make_layers, VGGish, VisualBackbone, AudioBackbone
- models/temporal_convolutional_model.py: Chomp1d, TemporalBlock, TemporalConvNet
- models/transformer.py: scaled_dot_product, MultimodalMultiheadAttention, MultiModalEncoderBlock,
  MultimodalTransformerEncoder
- models/model.py: LFAN, AttentionFusion, CAN
- configs.py: the TCN widths (``tcn`` ``channels`` for LFAN, ``tcn_settings`` for CAN)

Their inputs (``their_inputs``): video (B, T, 3, 40, 40); logmel (B, 64, T, 96), what their reader's
``ToTensor`` makes of (T, 96, 64) windows; egemaps (B, 1, T, 88).
"""

from __future__ import annotations

import math
import warnings
from collections import namedtuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn import BatchNorm1d, BatchNorm2d, Conv2d, Dropout, Linear, MaxPool2d, Module, PReLU, Sequential

# ----------------------------------------------------------------------------- models/arcface_model.py


class Flatten(Module):
    def forward(self, input):
        return input.view(input.size(0), -1)


def l2_norm(input, axis=1):
    norm = torch.norm(input, 2, axis, True)
    return torch.div(input, norm)


class bottleneck_IR(Module):  # noqa: N801 - their name
    def __init__(self, in_channel, depth, stride):
        super().__init__()
        if in_channel == depth:
            self.shortcut_layer = MaxPool2d(1, stride)
        else:
            self.shortcut_layer = Sequential(Conv2d(in_channel, depth, (1, 1), stride, bias=False), BatchNorm2d(depth))
        self.res_layer = Sequential(
            BatchNorm2d(in_channel),
            Conv2d(in_channel, depth, (3, 3), (1, 1), 1, bias=False), PReLU(depth),
            Conv2d(depth, depth, (3, 3), stride, 1, bias=False), BatchNorm2d(depth))

    def forward(self, x):
        shortcut = self.shortcut_layer(x)
        res = self.res_layer(x)
        return res + shortcut


class Bottleneck(namedtuple("Block", ["in_channel", "depth", "stride"])):
    """A named tuple describing a ResNet block."""


def get_block(in_channel, depth, num_units, stride=2):
    return [Bottleneck(in_channel, depth, stride)] + [Bottleneck(depth, depth, 1) for _ in range(num_units - 1)]


def get_blocks_50():
    return [
        get_block(in_channel=64, depth=64, num_units=3, stride=1),
        get_block(in_channel=64, depth=128, num_units=4),
        get_block(in_channel=128, depth=256, num_units=14),
        get_block(in_channel=256, depth=512, num_units=3),
    ]


class Backbone(Module):
    def __init__(self, drop_ratio, input_channels=3):
        super().__init__()
        self.input_layer = Sequential(Conv2d(input_channels, 64, (3, 3), 1, 1, bias=False), BatchNorm2d(64), PReLU(64))
        self.output_layer = Sequential(BatchNorm2d(512), Dropout(drop_ratio), Flatten(), Linear(512 * 7 * 7, 512),
                                       BatchNorm1d(512))
        modules = []
        for block in get_blocks_50():
            for bottleneck in block:
                modules.append(bottleneck_IR(bottleneck.in_channel, bottleneck.depth, bottleneck.stride))
        self.body = Sequential(*modules)

    def forward(self, x):
        x = self.input_layer(x)
        x = self.body(x)
        x = self.output_layer(x)
        return l2_norm(x)


# ----------------------------------------------------------------------------- models/backbone.py


class VGG(nn.Module):
    def __init__(self, features):
        super().__init__()
        self.features = features
        self.embeddings = nn.Sequential(
            nn.Linear(512 * 4 * 6, 4096), nn.ReLU(True), nn.Linear(4096, 4096), nn.ReLU(True), nn.Linear(4096, 128))

    def forward(self, x):
        x = self.features(x)
        x = torch.transpose(x, 1, 3)
        x = torch.transpose(x, 1, 2)
        x = x.contiguous()
        x = x.view(x.size(0), -1)
        return self.embeddings(x)


def make_layers():
    layers = []
    in_channels = 1
    for v in [64, "M", 128, "M", 256, 256, "M", 512, 512, "M"]:
        if v == "M":
            layers += [nn.MaxPool2d(kernel_size=2, stride=2)]
        else:
            layers += [nn.Conv2d(in_channels, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            in_channels = v
    return nn.Sequential(*layers)


class VGGish(VGG):
    def __init__(self):
        super().__init__(make_layers())

    def forward(self, x, fs=None):
        x = x.detach().clone()[:, None, :, :].float()  # theirs: torch.tensor(x)[:, None, :, :].float()
        return VGG.forward(self, x)


class VisualBackbone(nn.Module):
    def __init__(self, num_classes=8, embedding_dim=512):
        super().__init__()
        self.backbone = Backbone(drop_ratio=0.4)
        self.backbone.output_layer = Sequential(BatchNorm2d(embedding_dim), Dropout(0.4), Flatten(),
                                                Linear(embedding_dim * 5 * 5, embedding_dim), BatchNorm1d(embedding_dim))
        self.logits = nn.Linear(in_features=embedding_dim, out_features=num_classes)

    def forward(self, x):
        return self.backbone(x)


class AudioBackbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = VGGish()
        for param in self.backbone.parameters():
            param.requires_grad = False

    def forward(self, x, extract_vggish=False):
        return self.backbone(x)


# ----------------------------------------------------------------------------- models/temporal_convolutional_model.py


def weight_norm(module):
    with warnings.catch_warnings():  # theirs: torch.nn.utils.weight_norm (deprecated since torch 2.1)
        warnings.simplefilter("ignore", FutureWarning)
        return torch.nn.utils.weight_norm(module)


class Chomp1d(nn.Module):
    def __init__(self, chomp_size):
        super().__init__()
        self.chomp_size = chomp_size

    def forward(self, x):
        return x[:, :, :-self.chomp_size].contiguous()


class TemporalBlock(nn.Module):
    def __init__(self, n_inputs, n_outputs, kernel_size, stride, dilation, padding, dropout=0.2):
        super().__init__()
        self.conv1 = weight_norm(nn.Conv1d(n_inputs, n_outputs, kernel_size, stride=stride, padding=padding,
                                           dilation=dilation))
        self.chomp1 = Chomp1d(padding)
        self.relu1 = nn.LeakyReLU()
        self.dropout1 = nn.Dropout(dropout)
        self.conv2 = weight_norm(nn.Conv1d(n_outputs, n_outputs, kernel_size, stride=stride, padding=padding,
                                           dilation=dilation))
        self.chomp2 = Chomp1d(padding)
        self.relu2 = nn.LeakyReLU()
        self.dropout2 = nn.Dropout(dropout)
        self.net = nn.Sequential(self.conv1, self.chomp1, self.relu1, self.dropout1,
                                 self.conv2, self.chomp2, self.relu2, self.dropout2)
        self.downsample = nn.Conv1d(n_inputs, n_outputs, 1) if n_inputs != n_outputs else None
        self.relu = nn.LeakyReLU()
        self.init_weights()

    def init_weights(self):
        nn.init.xavier_uniform_(self.conv1.weight, gain=np.sqrt(2))
        nn.init.xavier_uniform_(self.conv2.weight, gain=np.sqrt(2))
        if self.downsample is not None:
            nn.init.xavier_uniform_(self.downsample.weight, gain=np.sqrt(2))

    def forward(self, x):
        net = self.net(x)
        res = x if self.downsample is None else self.downsample(x)
        return self.relu(net + res)


class TemporalConvNet(nn.Module):
    def __init__(self, num_inputs, num_channels, kernel_size=2, dropout=0.2):
        super().__init__()
        layers = []
        for i in range(len(num_channels)):
            dilation_size = 2**i
            in_channels = num_inputs if i == 0 else num_channels[i - 1]
            layers += [TemporalBlock(in_channels, num_channels[i], kernel_size, stride=1, dilation=dilation_size,
                                     padding=(kernel_size - 1) * dilation_size, dropout=dropout)]
        self.network = nn.Sequential(*layers)

    def forward(self, x):
        return self.network(x)


# ----------------------------------------------------------------------------- models/transformer.py


def scaled_dot_product(q, k, v, mask=None):
    d_k = q.size()[-1]
    attn_logits = torch.matmul(q, k.transpose(-2, -1))
    attn_logits = attn_logits / math.sqrt(d_k)
    attention = F.softmax(attn_logits, dim=-1)
    values = torch.matmul(attention, v)
    return values, attention


class MultimodalMultiheadAttention(nn.Module):
    def __init__(self, modalities, input_dim, modal_dim, num_heads):
        super().__init__()
        self.modalities = modalities
        self.embed_dim = modal_dim
        self.num_heads = num_heads
        self.head_dim = modal_dim // num_heads
        self.qkv_proj = nn.ModuleDict()
        for modal in modalities:
            self.qkv_proj[modal] = nn.Linear(input_dim[modal], 3 * modal_dim)
        self.o_proj = nn.Linear(modal_dim * len(self.modalities), modal_dim * len(self.modalities))
        self._reset_parameters()

    def _reset_parameters(self):
        for modal in self.modalities:
            nn.init.xavier_uniform_(self.qkv_proj[modal].weight)
            self.qkv_proj[modal].bias.data.fill_(0)
        nn.init.xavier_uniform_(self.o_proj.weight)
        self.o_proj.bias.data.fill_(0)

    def forward(self, x, mask=None, return_attention=False):
        batch_size, seq_length, _ = x[self.modalities[0]].size()
        Q, K, V = [], [], []  # noqa: N806 - their names
        for modal in self.modalities:
            qkv = self.qkv_proj[modal](x[modal])
            qkv = qkv.reshape(batch_size, seq_length, self.num_heads, 1, 3 * self.head_dim)
            qkv = qkv.permute(0, 2, 1, 3, 4)  # [Batch, Head, SeqLen, Modal, Dims]
            q, k, v = qkv.chunk(3, dim=-1)
            Q.append(q)
            K.append(k)
            V.append(v)
        Q = torch.cat(Q, dim=-2)  # noqa: N806
        K = torch.cat(K, dim=-2)  # noqa: N806
        V = torch.cat(V, dim=-2)  # noqa: N806
        values, attention = scaled_dot_product(Q, K, V, mask=mask)
        values += V
        values = values.permute(0, 2, 1, 3, 4)  # [Batch, SeqLen, Head, Modal, Dims]
        values = values.reshape(batch_size, seq_length, self.embed_dim * len(self.modalities))
        o = self.o_proj(values)
        return (o, attention) if return_attention else o


class MultiModalEncoderBlock(nn.Module):
    def __init__(self, modalities, input_dim, modal_dim, num_heads, dropout=0.0):
        super().__init__()
        self.self_attn = MultimodalMultiheadAttention(modalities, input_dim, modal_dim, num_heads)
        output_dim = modal_dim * len(modalities)
        self.norm1 = nn.LayerNorm(output_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, mask=None):
        attn_out = self.self_attn(x, mask=mask)
        x = self.dropout(attn_out)
        return self.norm1(x)


class MultimodalTransformerEncoder(nn.Module):
    def __init__(self, modalities, input_dim, modal_dim, num_heads, dropout=0.0):
        super().__init__()
        self.layers = MultiModalEncoderBlock(modalities, input_dim, modal_dim, num_heads, dropout)

    def forward(self, x, mask=None):
        return self.layers(x, mask=mask)


# ----------------------------------------------------------------------------- models/model.py and configs.py

LFAN_TCN_CHANNELS = {"video": [256, 256, 128, 128], "logmel": [64, 64, 32, 32], "egemaps": [32, 32, 32, 32]}
CAN_TCN_SETTINGS = {
    "video": {"input_dim": 512, "channel": [256, 256, 128, 128, 128], "kernel_size": 5},
    "logmel": {"input_dim": 128, "channel": [128, 128, 64, 64, 64], "kernel_size": 5},
    "egemaps": {"input_dim": 88, "channel": [64, 64, 32, 32], "kernel_size": 5},
}


def load_visual_backbone():
    resnet = VisualBackbone()
    for param in resnet.parameters():
        param.requires_grad = False
    return resnet


def load_audio_backbone():
    vggish = AudioBackbone()
    for param in vggish.parameters():
        param.requires_grad = False
    return vggish


class LFAN(nn.Module):
    def __init__(self, modality=("video", "logmel", "egemaps"), kernel_size=5, example_length=300,
                 tcn_channel=LFAN_TCN_CHANNELS,
                 embedding_dim={"video": 512, "logmel": 128, "egemaps": 88},  # noqa: B006 - theirs
                 encoder_dim={"video": 128, "logmel": 32, "egemaps": 32},  # noqa: B006 - theirs
                 modal_dim=32, num_heads=2):
        super().__init__()
        self.modality = list(modality)
        self.kernel_size = kernel_size
        self.example_length = example_length
        self.tcn_channel = tcn_channel
        self.embedding_dim = embedding_dim
        self.encoder_dim = encoder_dim
        self.temporal, self.fusion = nn.ModuleDict(), None
        self.num_heads = num_heads
        self.modal_dim = modal_dim
        self.final_dim = self.encoder_dim[self.modality[0]] + self.modal_dim * len(self.modality)
        self.spatial = nn.ModuleDict()
        self.bn = nn.ModuleDict()

    def init(self):
        self.output_dim = 1
        if "video" in self.modality:
            self.spatial["visual"] = load_visual_backbone()
        if "logmel" in self.modality:
            self.spatial["audio"] = load_audio_backbone()
        for modal in self.modality:
            self.temporal[modal] = TemporalConvNet(num_inputs=self.embedding_dim[modal],
                                                   num_channels=self.tcn_channel[modal],
                                                   kernel_size=self.kernel_size, dropout=0.1)
            self.bn[modal] = BatchNorm1d(self.tcn_channel[modal][-1])
        self.fusion = MultimodalTransformerEncoder(modalities=self.modality, input_dim=self.encoder_dim,
                                                   modal_dim=self.modal_dim, num_heads=self.num_heads, dropout=0.1)
        self.regressor = nn.Linear(self.final_dim, self.output_dim)

    def forward(self, X):  # noqa: N803 - theirs
        if "video" in X:
            batch_size, length, channel, width, height = X["video"].shape
            X["video"] = X["video"].view(-1, channel, width, height)
            X["video"] = self.spatial.visual(X["video"])
            _, feature_dim = X["video"].shape
            X["video"] = X["video"].view(batch_size, length, feature_dim).unsqueeze(1)
        if "logmel" in X:
            batch_size, height, length, width = X["logmel"].shape
            X["logmel"] = X["logmel"].permute((0, 2, 3, 1)).contiguous()
            X["logmel"] = X["logmel"].view(-1, width, height)
            X["logmel"] = self.spatial.audio(X["logmel"])
            _, feature_dim = X["logmel"].shape
            X["logmel"] = X["logmel"].view(batch_size, length, feature_dim).unsqueeze(1)
        for modal in X:
            X[modal] = X[modal].squeeze(1).transpose(1, 2)
            X[modal] = self.temporal[modal](X[modal])
            X[modal] = self.bn[modal](X[modal]).transpose(1, 2)
        follower = self.fusion(X)
        X = torch.cat((X[self.modality[0]], follower), dim=-1)  # noqa: N806
        X = self.regressor(X)  # noqa: N806
        X = X.view(batch_size, self.example_length, -1)  # noqa: N806
        return torch.tanh(X)


class AttentionFusion(nn.Module):
    def __init__(self, num_feats_modality: list, num_out_feats: int = 256):
        super().__init__()
        self.attn = nn.ModuleList([])
        for num_feats in num_feats_modality:
            self.attn.append(nn.Linear(num_feats, num_out_feats))
        self.weights = nn.Linear(num_out_feats * len(num_feats_modality), num_out_feats * len(num_feats_modality))
        self.num_features = num_out_feats * len(num_feats_modality)

    def forward(self, x: dict):
        proj_m = []
        for i, m in enumerate(x.values()):
            proj_m.append(self.attn[i](m.transpose(1, 2)))
        attn_weights = F.softmax(self.weights(torch.cat(proj_m, -1)), dim=-1)
        return attn_weights * torch.cat(proj_m, -1)


class CAN(nn.Module):
    def __init__(self, modalities=("video", "logmel", "egemaps"), tcn_settings=CAN_TCN_SETTINGS, output_dim=1):
        super().__init__()
        self.temporal = nn.ModuleDict()
        self.up_sample = nn.ModuleDict()
        self.bn = nn.ModuleDict()
        self.spatial = nn.ModuleDict()
        for modal in modalities:
            self.temporal[modal] = TemporalConvNet(num_inputs=tcn_settings[modal]["input_dim"],
                                                   num_channels=tcn_settings[modal]["channel"],
                                                   kernel_size=tcn_settings[modal]["kernel_size"])
            self.bn[modal] = BatchNorm1d(tcn_settings[modal]["channel"][-1])
        feas_modalities = [tcn_settings[modal]["channel"][-1] for modal in modalities]
        self.fuse = AttentionFusion(num_feats_modality=feas_modalities, num_out_feats=128)
        self.conv_c = nn.Conv1d(128 * len(modalities), 128, 1)
        self.bn1 = BatchNorm1d(128 * len(modalities))
        self.fc1 = Linear(128 * len(modalities), 128 * len(modalities))
        self.fc2 = Linear(128 * len(modalities), output_dim)
        if "video" in modalities:
            self.spatial["visual"] = load_visual_backbone()
        if "logmel" in modalities:
            self.spatial["audio"] = load_audio_backbone()

    def forward(self, X):  # noqa: N803 - theirs
        x = {}
        if "video" in X:
            batch_size, length, channel, width, height = X["video"].shape
            X["video"] = X["video"].view(-1, channel, width, height)
            X["video"] = self.spatial.visual(X["video"])
            _, feature_dim = X["video"].shape
            X["video"] = X["video"].view(batch_size, length, feature_dim).unsqueeze(1)
        if "logmel" in X:
            batch_size, height, length, width = X["logmel"].shape
            X["logmel"] = X["logmel"].permute((0, 2, 3, 1)).contiguous()
            X["logmel"] = X["logmel"].view(-1, width, height)
            X["logmel"] = self.spatial.audio(X["logmel"])
            _, feature_dim = X["logmel"].shape
            X["logmel"] = X["logmel"].view(batch_size, length, feature_dim).unsqueeze(1)
        for modal in X:
            x[modal] = X[modal].squeeze(1).transpose(1, 2)
            x[modal] = self.temporal[modal](x[modal])
            x[modal] = self.bn[modal](x[modal])
        c = self.fuse(x)
        c = self.fc1(c).transpose(1, 2)
        c = self.bn1(c).transpose(1, 2)
        c = F.leaky_relu(c)
        c = self.fc2(c)
        return torch.tanh(c)


# ----------------------------------------------------------------------------- glue of the tests


def build_lfan(example_length: int) -> LFAN:
    """Their LFAN as experiment.py builds it (modalities video logmel egemaps, kernel 5, heads 2)."""
    model = LFAN(example_length=example_length)
    model.init()
    return model


def their_inputs(ours: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our model inputs as their reader and collate give them (same values, their layouts and names)."""
    return {
        "video": ours["frame"].clone(),  # (B, T, 3, 40, 40)
        "logmel": ours["logmel"].permute(0, 3, 1, 2).contiguous(),  # (B, T, 96, 64) -> ToTensor's (B, 64, T, 96)
        "egemaps": ours["egemaps_functionals"].unsqueeze(1).clone(),  # (B, 1, T, 88)
    }
