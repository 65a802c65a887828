"""Every constant of the AudioSet VGGish model and its input features, each with its unit (SPEC §3).

The values are those of the AudioSet release (``vggish_model.ckpt`` was trained on exactly these
features); changing one makes the pretrained weights meaningless.
"""

from __future__ import annotations

# ----------------------------------------------------------------------------- audio and log-mel
SAMPLE_RATE_HZ = 16000  # rate the model was trained at; other rates are resampled
STFT_WINDOW_S = 0.025  # 400 samples at 16 kHz, periodic Hann
STFT_HOP_S = 0.010  # 160 samples at 16 kHz: 100 log-mel frames per second
N_MEL_BANDS = 64  # mel bands of a patch (the patch width)
MEL_MIN_HZ = 125.0  # lower edge of the lowest mel triangle
MEL_MAX_HZ = 7500.0  # upper edge of the highest mel triangle
LOG_OFFSET = 0.01  # log(mel magnitude + LOG_OFFSET) avoids log(0)
HTK_MEL_BREAK_HZ = 700.0  # HTK mel scale: mel = HTK_MEL_Q * ln(1 + hz / HTK_MEL_BREAK_HZ)
HTK_MEL_Q = 1127.0

# ----------------------------------------------------------------------------- patches
PATCH_FRAMES = 96  # log-mel frames per patch: 0.96 s at a 10 ms hop (the patch height)
PATCH_S = PATCH_FRAMES * STFT_HOP_S  # 0.96 s of audio per embedding
END_PAD_S = 1.0  # the authors pad the waveform's end with this much of its last sample

# ----------------------------------------------------------------------------- network
EMBEDDING_SIZE = 128  # width of the pre-PCA embedding (the 'vggish/embedding' tensor)
CONV_KERNEL = 3  # every convolution is 3x3, stride 1, SAME padding, ReLU
POOL_KERNEL = 2  # every max-pool is 2x2, stride 2, SAME padding
# (scope, output channels) of each convolution; a scope with a slash is one of a repeated block.
CONV_LAYERS: tuple[tuple[str, int], ...] = (
    ("conv1", 64),
    ("conv2", 128),
    ("conv3/conv3_1", 256),
    ("conv3/conv3_2", 256),
    ("conv4/conv4_1", 512),
    ("conv4/conv4_2", 512),
)
POOL_AFTER = ("conv1", "conv2", "conv3/conv3_2", "conv4/conv4_2")  # pool1 .. pool4 follow these
FC_LAYERS: tuple[tuple[str, int], ...] = (("fc1/fc1_1", 4096), ("fc1/fc1_2", 4096))  # ReLU
EMBEDDING_SCOPE = "fc2"  # linear layer 4096 -> EMBEDDING_SIZE, no activation

SCOPE = "vggish"
INPUT_OP_NAME = "vggish/input_features"  # placeholder, float32 (None, PATCH_FRAMES, N_MEL_BANDS)
OUTPUT_OP_NAME = "vggish/embedding"  # float32 (None, EMBEDDING_SIZE)

# ----------------------------------------------------------------------------- PCA postprocessing
PCA_EIGEN_VECTORS_KEY = "pca_eigen_vectors"  # (128, 128) in vggish_pca_params.npz
PCA_MEANS_KEY = "pca_means"  # (128, 1) in vggish_pca_params.npz
QUANTIZE_MIN = -2.0  # the AudioSet release clips PCA output to [QUANTIZE_MIN, QUANTIZE_MAX]
QUANTIZE_MAX = 2.0  # and maps it linearly onto 0..255 (uint8)

# ----------------------------------------------------------------------------- where users get them
CHECKPOINT_URL = "https://storage.googleapis.com/audioset/vggish_model.ckpt"
PCA_PARAMS_URL = "https://storage.googleapis.com/audioset/vggish_pca_params.npz"
RELEASE_HINT = (
    f"download it from the AudioSet VGGish release (tensorflow/models, research/audioset/vggish): "
    f"{CHECKPOINT_URL} and {PCA_PARAMS_URL}"
)
# The authors' later repository (sucv/ABAW3) links a Google Drive folder, under "Model state dict" in
# its README, holding res50_ir_0.887.pth and vggish.pth (VGGish in PyTorch layout).
ABAW3_WEIGHTS_URL = "https://drive.google.com/drive/folders/1yh0vVY-AlwVCDxdAUy_c6e9fVbXUSnF5"
TORCH_WEIGHTS_HINT = (
    f"use the authors' vggish.pth from the folder linked under 'Model state dict' in the sucv/ABAW3 "
    f"README ({ABAW3_WEIGHTS_URL}), or the AudioSet release's {CHECKPOINT_URL}"
)
