"""FC-DenseNet ("The One Hundred Layers Tiramisu", Jégou et al., CVPR workshops 2017).

A fully convolutional DenseNet for per-pixel classification (segmentation), here for
single-channel astronomical cut-outs. The network is a U-shaped encoder/decoder whose
building block is the *dense block*:

* **Dense block** (``n`` layers, growth rate ``k``): each layer is BN -> ReLU -> 3x3 conv
  (``k`` output channels) -> dropout, and sees the concatenation of the block's input and of
  every earlier layer's output. A block therefore adds ``n * k`` channels; feature re-use
  keeps each layer thin.
* **Down path**: a first 3x3 convolution, then per level a dense block whose *whole* output
  (input + new features) is kept as a skip connection, followed by a **transition down**
  (BN -> ReLU -> 1x1 conv -> dropout -> 2x2 max-pool) that halves the resolution.
* **Bottleneck**: a dense block at the lowest resolution.
* **Up path**: per level a **transition up** (3x3 transposed convolution, stride 2) that
  doubles the resolution, concatenation with the matching skip connection, then a dense
  block. To keep the channel count from exploding, the transposed convolution only
  upsamples the *new* features of the preceding dense block, not its input (which is already
  present in the skip connection) -- the paper's key trick. Only the last up block returns
  its full concatenated output.
* A final 1x1 convolution maps to ``n_classes`` logits per pixel (the softmax is left to the
  loss or to the caller: an argmax does not need it).

The transposed convolution yields ``2h + 1`` rows for an input of ``h``, so its output is
centre-cropped to the skip connection's size: any input size works, odd ones included
(max-pooling floors them).

Every constructor argument is stored under its own name (tuples as tuples), so hubserve can
save the weights as safetensors and rebuild the module from its ``init_kwargs``; the module is
TorchScript-scriptable (:func:`script`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "DenseBlock",
    "DenseLayer",
    "FCDenseNet",
    "TransitionDown",
    "TransitionUp",
    "fc_densenet56",
    "fc_densenet67",
    "fc_densenet103",
    "script",
    "tiny",
]


class DenseLayer(nn.Sequential):
    """BN -> ReLU -> 3x3 conv (``growth_rate`` channels) -> dropout."""

    def __init__(self, in_channels: int, growth_rate: int, dropout: float = 0.2) -> None:
        super().__init__(
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, growth_rate, kernel_size=3, padding=1, bias=True),
            nn.Dropout2d(dropout),
        )


class DenseBlock(nn.Module):
    """``n_layers`` dense layers, each fed the concatenation of everything before it.

    With ``upsample=False`` the block returns its input concatenated with all new features
    (``in_channels + n_layers * growth_rate`` channels); with ``upsample=True`` it returns only
    the new features (``n_layers * growth_rate``), which is what the up path upsamples.
    """

    def __init__(
        self,
        in_channels: int,
        growth_rate: int,
        n_layers: int,
        upsample: bool = False,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.growth_rate = growth_rate
        self.n_layers = n_layers
        self.upsample = upsample
        self.dropout = dropout
        self.layers = nn.ModuleList(
            DenseLayer(in_channels + i * growth_rate, growth_rate, dropout) for i in range(n_layers)
        )

    @property
    def out_channels(self) -> int:
        new = self.n_layers * self.growth_rate
        return new if self.upsample else self.in_channels + new

    def forward(self, x: Tensor) -> Tensor:
        new_features: list[Tensor] = []
        for layer in self.layers:
            out = layer(x)
            x = torch.cat([x, out], dim=1)
            new_features.append(out)
        if self.upsample:
            return torch.cat(new_features, dim=1)
        return x


class TransitionDown(nn.Sequential):
    """BN -> ReLU -> 1x1 conv (same channels) -> dropout -> 2x2 max-pool: half resolution."""

    def __init__(self, channels: int, dropout: float = 0.2) -> None:
        super().__init__(
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, kernel_size=1, bias=True),
            nn.Dropout2d(dropout),
            nn.MaxPool2d(2),
        )


class TransitionUp(nn.Module):
    """3x3 transposed conv, stride 2, then centre-crop to the skip's size and concatenate."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose2d(
            in_channels, out_channels, kernel_size=3, stride=2, padding=0, bias=True
        )

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        out = self.conv(x)
        height, width = skip.shape[2], skip.shape[3]
        top = (out.shape[2] - height) // 2
        left = (out.shape[3] - width) // 2
        out = out[:, :, top : top + height, left : left + width]
        return torch.cat([out, skip], dim=1)


class _UpStage(nn.Module):
    """Transition up + concatenation with the skip + dense block (one level of the up path)."""

    def __init__(self, transition: TransitionUp, block: DenseBlock) -> None:
        super().__init__()
        self.transition = transition
        self.block = block

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.block(self.transition(x, skip))


class _DownStage(nn.Module):
    """Dense block (its output is the skip connection) + transition down."""

    def __init__(self, block: DenseBlock, transition: TransitionDown) -> None:
        super().__init__()
        self.block = block
        self.transition = transition

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        skip = self.block(x)
        return self.transition(skip), skip


class FCDenseNet(nn.Module):
    """FC-DenseNet: ``(N, in_channels, H, W)`` images to ``(N, n_classes, H, W)`` logits.

    ``down_blocks[i]`` / ``up_blocks[i]`` are the layer counts of the dense blocks of level
    ``i`` of the down and up paths (the up path lists them from the bottom up, so symmetric
    networks use reversed tuples); both have one entry per resolution level. Dropout is only
    active in training mode.
    """

    def __init__(
        self,
        in_channels: int = 1,
        n_classes: int = 4,
        down_blocks: Sequence[int] = (4, 4, 4, 4, 4),
        up_blocks: Sequence[int] = (4, 4, 4, 4, 4),
        bottleneck_layers: int = 4,
        growth_rate: int = 12,
        first_conv_channels: int = 48,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        if len(down_blocks) != len(up_blocks) or not down_blocks:
            raise ValueError(
                f"down_blocks and up_blocks need the same (non-zero) number of levels,"
                f" got {len(down_blocks)} and {len(up_blocks)}"
            )
        if min(*down_blocks, *up_blocks, bottleneck_layers) < 1:
            raise ValueError("every dense block needs at least one layer")
        # Same names as the arguments: hubserve rebuilds the module from these attributes.
        self.in_channels = in_channels
        self.n_classes = n_classes
        self.down_blocks = tuple(int(n) for n in down_blocks)
        self.up_blocks = tuple(int(n) for n in up_blocks)
        self.bottleneck_layers = bottleneck_layers
        self.growth_rate = growth_rate
        self.first_conv_channels = first_conv_channels
        self.dropout = dropout

        self.first_conv = nn.Conv2d(
            in_channels, first_conv_channels, kernel_size=3, padding=1, bias=True
        )
        channels = first_conv_channels
        skip_channels: list[int] = []
        down: list[_DownStage] = []
        for n_layers in self.down_blocks:
            block = DenseBlock(channels, growth_rate, n_layers, dropout=dropout)
            channels = block.out_channels
            skip_channels.append(channels)
            down.append(_DownStage(block, TransitionDown(channels, dropout)))
        self.down = nn.ModuleList(down)

        self.bottleneck = DenseBlock(
            channels, growth_rate, bottleneck_layers, upsample=True, dropout=dropout
        )
        upsampled = self.bottleneck.out_channels  # only the new features go up
        up: list[_UpStage] = []
        for level, n_layers in enumerate(self.up_blocks):
            last = level == len(self.up_blocks) - 1
            transition = TransitionUp(upsampled, upsampled)
            block = DenseBlock(
                upsampled + skip_channels[-1 - level],
                growth_rate,
                n_layers,
                upsample=not last,
                dropout=dropout,
            )
            up.append(_UpStage(transition, block))
            upsampled = block.out_channels
        self.up = nn.ModuleList(up)
        self.final_conv = nn.Conv2d(upsampled, n_classes, kernel_size=1, bias=True)
        self._init_weights()

    def _init_weights(self) -> None:
        # He initialisation, as in the paper (ReLU everywhere).
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
                nn.init.kaiming_uniform_(module.weight, nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        out = self.first_conv(x)
        skips: list[Tensor] = []
        for stage in self.down:
            out, skip = stage(out)
            skips.append(skip)
        out = self.bottleneck(out)
        for stage in self.up:
            out = stage(out, skips.pop())
        return self.final_conv(out)


def fc_densenet56(in_channels: int = 1, n_classes: int = 4, dropout: float = 0.2) -> FCDenseNet:
    """FC-DenseNet56: 4 layers per dense block, growth rate 12 (1.4 M parameters in the paper)."""
    return FCDenseNet(
        in_channels, n_classes, (4,) * 5, (4,) * 5, 4, growth_rate=12, dropout=dropout
    )


def fc_densenet67(in_channels: int = 1, n_classes: int = 4, dropout: float = 0.2) -> FCDenseNet:
    """FC-DenseNet67: 5 layers per dense block, growth rate 16 (3.5 M parameters)."""
    return FCDenseNet(
        in_channels, n_classes, (5,) * 5, (5,) * 5, 5, growth_rate=16, dropout=dropout
    )


def fc_densenet103(in_channels: int = 1, n_classes: int = 4, dropout: float = 0.2) -> FCDenseNet:
    """FC-DenseNet103: blocks of 4, 5, 7, 10, 12 layers, bottleneck 15, growth rate 16 (9.4 M)."""
    return FCDenseNet(
        in_channels,
        n_classes,
        down_blocks=(4, 5, 7, 10, 12),
        up_blocks=(12, 10, 7, 5, 4),
        bottleneck_layers=15,
        growth_rate=16,
        dropout=dropout,
    )


def tiny(in_channels: int = 1, n_classes: int = 4, dropout: float = 0.2) -> FCDenseNet:
    """A small FC-DenseNet for benchmarks and tests: 3 levels of 2 layers, growth rate 8.

    Its 8x downsampling suits 64x64 cut-outs, and it costs a few milliseconds per image on one
    CPU core, so serving overhead is visible next to the model's own time.
    """
    return FCDenseNet(
        in_channels,
        n_classes,
        down_blocks=(2, 2, 2),
        up_blocks=(2, 2, 2),
        bottleneck_layers=2,
        growth_rate=8,
        first_conv_channels=16,
        dropout=dropout,
    )


def script(model: nn.Module) -> torch.jit.ScriptModule:
    """``torch.jit.script(model.eval())`` without torch 2.13's TorchScript deprecation warning.

    TorchScript still loads without the Python class, which is why serving benchmarks use it.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"`torch\.jit\.\w+` is deprecated", DeprecationWarning)
        return torch.jit.script(model.eval())  # type: ignore[no-any-return]
