"""The VGGish network as a TensorFlow 1-style graph built with tf_slim (SPEC §3).

Variable names and shapes are those of the AudioSet release's ``vggish_model.ckpt``
(``vggish/conv1/weights``, ``vggish/conv3/conv3_1/biases``, ``vggish/fc1/fc1_2/weights``, ...), so
that checkpoint restores into this graph as it is. The input placeholder is
``vggish/input_features`` (None, 96, 64) and the output ``vggish/embedding`` (None, 128), the
pre-activation of the embedding layer (before PCA).

TensorFlow is imported inside functions only: importing this module stays cheap and TF-free.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from types import ModuleType
from typing import Any

from vggish import params

logger = logging.getLogger(__name__)


def import_tensorflow() -> ModuleType:
    """``tensorflow.compat.v1``, imported on first use with TensorFlow's C++ and Python logs quietened."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow.compat.v1 as tf

    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    return tf


def variable_shapes() -> dict[str, tuple[int, ...]]:
    """Name -> shape of every variable of the released checkpoint, computed without TensorFlow."""
    shapes: dict[str, tuple[int, ...]] = {}
    channels = 1  # a patch is a one-channel image (96, 64, 1)
    height, width = params.PATCH_FRAMES, params.N_MEL_BANDS
    for scope, out_channels in params.CONV_LAYERS:
        shapes[f"{params.SCOPE}/{scope}/weights"] = (params.CONV_KERNEL, params.CONV_KERNEL, channels, out_channels)
        shapes[f"{params.SCOPE}/{scope}/biases"] = (out_channels,)
        channels = out_channels
        if scope in params.POOL_AFTER:  # SAME padding, stride 2: ceil
            height, width = -(-height // params.POOL_KERNEL), -(-width // params.POOL_KERNEL)
    features = height * width * channels  # 6 * 4 * 512 = 12288
    for scope, units in (*params.FC_LAYERS, (params.EMBEDDING_SCOPE, params.EMBEDDING_SIZE)):
        shapes[f"{params.SCOPE}/{scope}/weights"] = (features, units)
        shapes[f"{params.SCOPE}/{scope}/biases"] = (units,)
        features = units
    return shapes


def define_vggish(features: Any = None) -> tuple[Any, Any]:
    """Build VGGish in the current default graph, under the variable scope ``vggish``.

    Args:
        features: float32 tensor (B, 96, 64) of log-mel patches; ``None`` creates the placeholder
            ``vggish/input_features``.

    Returns:
        (input tensor (B, 96, 64), embedding tensor ``vggish/embedding`` (B, 128)).
    """
    tf = import_tensorflow()
    import tf_slim as slim

    with warnings.catch_warnings():  # tf_slim calls Keras-1 layer methods that warn on every use
        warnings.simplefilter("ignore", UserWarning)
        return _define(tf, slim, features)


def _define(tf: ModuleType, slim: ModuleType, features: Any) -> tuple[Any, Any]:
    conv_scope = slim.arg_scope(
        [slim.conv2d], kernel_size=[params.CONV_KERNEL] * 2, stride=1, padding="SAME"
    )
    pool_scope = slim.arg_scope(
        [slim.max_pool2d], kernel_size=[params.POOL_KERNEL] * 2, stride=params.POOL_KERNEL, padding="SAME"
    )
    # Inference only: nothing is trainable; the initialisers are overwritten by the checkpoint.
    layer_scope = slim.arg_scope(
        [slim.conv2d, slim.fully_connected],
        activation_fn=tf.nn.relu,
        weights_initializer=tf.glorot_uniform_initializer(),
        biases_initializer=tf.zeros_initializer(),
        trainable=False,
    )
    with conv_scope, pool_scope, layer_scope, tf.variable_scope(params.SCOPE):
        if features is None:
            features = tf.placeholder(
                tf.float32, shape=(None, params.PATCH_FRAMES, params.N_MEL_BANDS), name="input_features"
            )
        net = tf.reshape(features, [-1, params.PATCH_FRAMES, params.N_MEL_BANDS, 1])  # (B, 96, 64, 1)
        n_pools = 0
        for scope, out_channels in params.CONV_LAYERS:
            block, _, layer = scope.rpartition("/")
            with tf.variable_scope(block) if block else contextlib.nullcontext():
                net = slim.conv2d(net, out_channels, scope=layer)
            if scope in params.POOL_AFTER:
                n_pools += 1
                net = slim.max_pool2d(net, scope=f"pool{n_pools}")
        net = slim.flatten(net)  # (B, 6 * 4 * 512), NHWC order as in the release
        for scope, units in params.FC_LAYERS:
            block, _, layer = scope.rpartition("/")
            with tf.variable_scope(block):
                net = slim.fully_connected(net, units, scope=layer)
        net = slim.fully_connected(net, params.EMBEDDING_SIZE, activation_fn=None, scope=params.EMBEDDING_SCOPE)
        embedding = tf.identity(net, name="embedding")  # (B, 128)
    return features, embedding


def vggish_variables(graph: Any) -> list[Any]:
    """The graph's variables that the checkpoint holds, in ``variable_shapes`` order."""
    tf = import_tensorflow()
    by_name = {v.op.name: v for v in graph.get_collection(tf.GraphKeys.GLOBAL_VARIABLES)}
    return [by_name[name] for name in variable_shapes()]


def assign_variables(session: Any, graph: Any, values: dict[str, Any]) -> None:
    """Set the graph's VGGish variables to ``values`` (name -> array), one variable at a time.

    The restore path for weights that are not a TensorFlow checkpoint (``vggish.pth``); call it
    before the graph is finalized (it adds one placeholder and one assign op per variable).
    """
    tf = import_tensorflow()
    with graph.as_default():
        for variable in vggish_variables(graph):
            feed = tf.placeholder(tf.float32, shape=variable.shape)
            session.run(variable.assign(feed), feed_dict={feed: values[variable.op.name]})
