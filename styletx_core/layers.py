"""The VGG layer table: architectures as data and every layer name, without torch.

One home for the names the engine, the ONNX export, the scorer and the option checks share, so that
``styletx_core.options`` (and through it the server's validation and ``--help``) never imports torch.
"""

from __future__ import annotations

__all__ = [
    "ARCHS", "CFGS", "FEATURE_LAYERS", "MIXED_W2_LAYERS", "SCORING_LAYERS", "STYLE_LAYERS", "conv_names",
    "layer_loss_kind", "layer_names",
]

#: ``"M"`` = pool, numbers = conv widths (torchvision's ``cfgs``).
CFGS: dict[str, list[int | str]] = {
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}
#: The architectures, in the order the CLI and the weights list them.
ARCHS: tuple[str, ...] = tuple(CFGS)

#: Gatys et al.'s style layers (the first ReLU of each block).
STYLE_LAYERS: tuple[str, ...] = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
#: The layers the engine taps: the default style layers plus the content layer relu4_2.
FEATURE_LAYERS: tuple[str, ...] = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu4_2", "relu5_1")
#: What the ONNX export carries and the quality scores read: the style layers, then the content layer.
SCORING_LAYERS: tuple[str, ...] = (*STYLE_LAYERS, "relu4_2")
#: The layers ``style_loss="mixed"`` matches by mean + covariance (W2) instead of a Gram matrix. relu4_1 is where a
#: painting's motifs (swirls, facets) are features of their own: a relative Gram error there is dominated by the
#: largest co-activations and lets the mean activations (how much of each motif the picture has, which is what
#: style embeddings such as Magenta's pool) drift; W2 matches the mean apart from the covariance.
MIXED_W2_LAYERS: tuple[str, ...] = ("relu4_1",)


def layer_loss_kind(kind: str, layer: str) -> str:
    """The statistic ``layer`` uses under the ``style_loss`` option ``kind``: ``gram`` or ``w2``. Here, torch-free,
    because the targets (what is matched) and the balance (what tolerance the error is read against) both ask."""
    if kind == "mixed":
        return "w2" if layer in MIXED_W2_LAYERS else "gram"
    return kind


def layer_names(arch: str) -> list[str]:
    """Names of every layer of ``arch`` in order: ``conv1_1, relu1_1, ..., pool1, ...``."""
    names: list[str] = []
    block, index = 1, 1
    for item in CFGS[arch]:
        if item == "M":
            names.append(f"pool{block}")
            block, index = block + 1, 1
        else:
            names += [f"conv{block}_{index}", f"relu{block}_{index}"]
            index += 1
    return names


def conv_names(arch: str) -> list[str]:
    return [name for name in layer_names(arch) if name.startswith("conv")]
