"""Reconstructor R: MIMO-UNet (Cho et al., ICCV 2021) as adapted by the RALF authors.

Three scales with base, 2*base and 4*base channels; every encoder and decoder stage is a stack of
residual blocks (conv3x3-ReLU-conv3x3 + skip). Shallow convolutional modules (SCM) embed the 1/2
and 1/4 downscaled inputs, feature attention modules (FAM) merge them into the encoder, asymmetric
feature fusion (AFF) mixes all encoder scales for each decoder skip. As in the authors' code only
the full-resolution output is kept (the 1/2 and 1/4 output heads are dropped) and a global residual
is added: x~ = net(x^) + x^.

Module names against the original MIMO-UNet / RALF code (for weight import):
  stem = feat_extract.0, downsample.{0,1} = feat_extract.{1,2}, upsample.{0,1} = feat_extract.{3,4},
  head = feat_extract.5, encoders.i = Encoder.i.layers, decoders.i = Decoder.i.layers,
  fuse.i = Convs.i, aff.i = AFFs.i, shallow.0 = SCM2 (1/2), shallow.1 = SCM1 (1/4),
  fam.0 = FAM2 (1/2), fam.1 = FAM1 (1/4); inside, every `BasicConv.main.k` is our `k`,
  ResBlock.main is `body`, SCM.main/.conv are `body`/`fuse`, AFF.conv is `body`, FAM.merge is `merge`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ralf.config import ReconstructorConfig


class ConvAct(nn.Sequential):
    """Conv (or stride-2 transposed conv) with 'same' padding, optionally followed by ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        relu: bool = True,
        transpose: bool = False,
    ) -> None:
        if transpose:
            # kernel 4, stride 2, padding 1 exactly doubles the spatial size.
            conv: nn.Module = nn.ConvTranspose2d(
                in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2 - 1
            )
        else:
            conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2)
        layers = [conv, nn.ReLU()] if relu else [conv]
        super().__init__(*layers)


class ResBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(ConvAct(channels, channels, 3), ConvAct(channels, channels, 3, relu=False))

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x) + x


def res_stage(channels: int, num_blocks: int) -> nn.Sequential:
    return nn.Sequential(*[ResBlock(channels) for _ in range(num_blocks)])


class ShallowConvModule(nn.Module):
    """SCM: embeds a downscaled input image into `channels` features (the image itself is kept)."""

    def __init__(self, channels: int, in_channels: int = 3) -> None:
        super().__init__()
        self.body = nn.Sequential(
            ConvAct(in_channels, channels // 4, 3),
            ConvAct(channels // 4, channels // 2, 1),
            ConvAct(channels // 2, channels // 2, 3),
            ConvAct(channels // 2, channels - in_channels, 1),
        )
        self.fuse = ConvAct(channels, channels, 1, relu=False)

    def forward(self, image: Tensor) -> Tensor:
        return self.fuse(torch.cat([image, self.body(image)], dim=1))


class FeatureAttentionModule(nn.Module):
    """FAM: the SCM features gate the encoder features, with a residual path."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.merge = ConvAct(channels, channels, 3, relu=False)

    def forward(self, encoder_features: Tensor, shallow_features: Tensor) -> Tensor:
        return encoder_features + self.merge(encoder_features * shallow_features)


class AsymmetricFeatureFusion(nn.Module):
    """AFF: concatenates the three encoder scales (resized to one scale) and projects them."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            ConvAct(in_channels, out_channels, 1), ConvAct(out_channels, out_channels, 3, relu=False)
        )

    def forward(self, full: Tensor, half: Tensor, quarter: Tensor) -> Tensor:
        return self.body(torch.cat([full, half, quarter], dim=1))


class MIMOUNet(nn.Module):
    """forward(x^) -> (x~, embedding); embedding = GAP of the deepest encoder output, (B, 4*base)."""

    def __init__(self, config: ReconstructorConfig, in_channels: int = 3) -> None:
        super().__init__()
        base, blocks = config.base_channels, config.num_res_blocks
        if 2 * base <= in_channels:
            # The 1/2-scale SCM keeps the input image as `in_channels` of its 2*base output channels.
            raise ValueError(f"reconstructor base_channels must exceed {in_channels // 2}, got {base}")
        self.embedding_dim = config.embedding_dim
        self.stem = ConvAct(in_channels, base, 3)
        widths = (base, 2 * base, 4 * base)
        self.encoders = nn.ModuleList([res_stage(c, blocks) for c in widths])
        self.downsample = nn.ModuleList([ConvAct(base, 2 * base, 3, stride=2), ConvAct(2 * base, 4 * base, 3, stride=2)])
        # Index 0 works at 1/2 scale, index 1 at 1/4 scale.
        self.shallow = nn.ModuleList([ShallowConvModule(c, in_channels) for c in widths[1:]])
        self.fam = nn.ModuleList([FeatureAttentionModule(c) for c in widths[1:]])
        # Index 0 feeds the full-scale decoder skip, index 1 the 1/2-scale one.
        self.aff = nn.ModuleList([AsymmetricFeatureFusion(7 * base, c) for c in widths[:2]])
        self.decoders = nn.ModuleList([res_stage(c, blocks) for c in reversed(widths)])
        self.upsample = nn.ModuleList(
            [
                ConvAct(4 * base, 2 * base, 4, stride=2, transpose=True),
                ConvAct(2 * base, base, 4, stride=2, transpose=True),
            ]
        )
        self.fuse = nn.ModuleList([ConvAct(4 * base, 2 * base, 1), ConvAct(2 * base, base, 1)])
        self.head = ConvAct(base, in_channels, 3, relu=False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.shape[-1] % 4 or x.shape[-2] % 4:
            raise ValueError(f"MIMO-UNet needs height and width divisible by 4, got {tuple(x.shape[-2:])}")
        x_half = F.interpolate(x, scale_factor=0.5)
        x_quarter = F.interpolate(x_half, scale_factor=0.5)

        enc_full = self.encoders[0](self.stem(x))
        z = self.fam[0](self.downsample[0](enc_full), self.shallow[0](x_half))
        enc_half = self.encoders[1](z)
        z = self.fam[1](self.downsample[1](enc_half), self.shallow[1](x_quarter))
        enc_quarter = self.encoders[2](z)
        embedding = enc_quarter.mean(dim=(2, 3))

        quarter_to_half = F.interpolate(enc_quarter, scale_factor=2.0)
        skip_half = self.aff[1](F.interpolate(enc_full, scale_factor=0.5), enc_half, quarter_to_half)
        skip_full = self.aff[0](
            enc_full, F.interpolate(enc_half, scale_factor=2.0), F.interpolate(quarter_to_half, scale_factor=2.0)
        )

        z = self.upsample[0](self.decoders[0](enc_quarter))
        z = self.upsample[1](self.decoders[1](self.fuse[0](torch.cat([z, skip_half], dim=1))))
        z = self.head(self.decoders[2](self.fuse[1](torch.cat([z, skip_full], dim=1))))
        return z + x, embedding
