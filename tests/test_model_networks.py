"""Shapes, parameter counts and wiring of the RALF networks."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from ralf.attention import DestructionGuidance, SpatialGate
from ralf.classifier import Classifier
from ralf.config import RALFConfig, ReconstructorConfig
from ralf.discriminator import Discriminator
from ralf.model import RALF, RALFOutput
from ralf.reconstructor import MIMOUNet


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def tiny() -> RALF:
    torch.manual_seed(0)
    return RALF(RALFConfig.tiny()).eval()


@pytest.fixture(scope="module")
def paper_on_meta() -> RALF:
    """Paper-sized model without memory or compute: shapes and parameter counts only."""
    with torch.device("meta"):
        return RALF(RALFConfig.paper()).eval()


def test_tiny_forward_all_shapes(tiny: RALF) -> None:
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        out = tiny.forward_all(x)
    assert isinstance(out, RALFOutput)
    assert out.destroyed.shape == out.reconstruction.shape == x.shape
    assert out.embedding.shape == (2, tiny.config.reconstructor.embedding_dim) == (2, 32)
    assert out.logit.shape == (2,)
    assert torch.isfinite(out.logit).all()
    with torch.no_grad():
        assert torch.equal(tiny(x), out.logit)


def test_paper_shapes(paper_on_meta: RALF) -> None:
    x = torch.empty(2, 3, 256, 256, device="meta")
    out = paper_on_meta.forward_all(x)
    assert out.destroyed.shape == out.reconstruction.shape == (2, 3, 256, 256)
    assert out.embedding.shape == (2, 128)
    assert out.logit.shape == (2,)
    assert paper_on_meta.center.shape == (128,)
    stem = paper_on_meta.classifier.backbone.stem(x)
    assert stem.shape == (2, 64, 125, 125)
    assert paper_on_meta.classifier.guidance is not None
    assert paper_on_meta.classifier.guidance(x).shape == (2, 1, 125, 125)


def test_paper_parameter_counts(paper_on_meta: RALF) -> None:
    counts = {
        "destructor": count(paper_on_meta.destructor),
        "reconstructor": count(paper_on_meta.reconstructor),
        "classifier": count(paper_on_meta.classifier),
        "xception (backbone + 2048->1 head)": count(paper_on_meta.classifier.backbone),
        "discriminator": count(Discriminator(paper_on_meta.config.discriminator, 256)),
    }
    for name, value in counts.items():
        print(f"{name:36s} {value / 1e6:8.3f}M")
    assert counts["destructor"] == 256 * 256
    # Paper Table 5: Xception 20.8M; Chollet's network with a 2048->1 head has 20,809,001.
    assert counts["xception (backbone + 2048->1 head)"] == 20_809_001
    # Notes: MIMO-UNet about 6.8M, DCGAN discriminator about 0.7M.
    assert abs(counts["reconstructor"] / 6.8e6 - 1) < 0.02
    assert abs(counts["discriminator"] / 0.7e6 - 1) < 0.02


def test_resnet_parameter_counts_near_table_5() -> None:
    with torch.device("meta"):
        for backbone, paper_millions in (("resnet18", 11.6), ("resnet50", 25.5)):
            model = Classifier(RALFConfig.paper(classifier={"backbone": backbone}).classifier)
            # Table 5 counts the 1000-class ImageNet head; ours has one logit.
            with_imagenet_head = count(model.backbone) + (model.backbone.num_features + 1) * 999
            assert abs(with_imagenet_head / (paper_millions * 1e6) - 1) < 0.02


@pytest.mark.parametrize(
    ("backbone", "pool", "guidance"),
    list(itertools.product(["xception", "resnet18", "resnet50"], ["max", "avg"], [True, False])),
)
def test_classifier_variants_build_and_run(backbone: str, pool: str, guidance: bool) -> None:
    config = RALFConfig.tiny(classifier={"backbone": backbone, "pool": pool, "destruction_guidance": guidance})
    classifier = Classifier(config.classifier).eval()
    diff_recon, diff_destroyed = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        logit = classifier(diff_recon, diff_destroyed)
        assert logit.shape == (2,)
        assert torch.isfinite(logit).all()
        if guidance:
            assert classifier.guidance is not None
            stem = classifier.backbone.stem(diff_recon)
            assert classifier.guidance(diff_destroyed).shape == (2, 1, *stem.shape[-2:])
            # The guidance branch must actually influence the logit.
            assert not torch.equal(logit, classifier(diff_recon, torch.zeros_like(diff_destroyed)))
        else:
            assert classifier.guidance is None
            assert torch.equal(logit, classifier(diff_recon, torch.zeros_like(diff_destroyed)))


def test_max_and_average_pooling_differ() -> None:
    torch.manual_seed(0)
    max_pool = Classifier(RALFConfig.tiny().classifier).eval()
    avg_pool = Classifier(RALFConfig.tiny(classifier={"pool": "avg"}).classifier).eval()
    avg_pool.load_state_dict(max_pool.state_dict())
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(max_pool(x, x), avg_pool(x, x))


def test_spatial_gate_uses_channel_max_and_mean() -> None:
    gate = SpatialGate(3)
    with torch.no_grad():
        gate.conv.weight.zero_()
        gate.conv.bias.zero_()
        gate.conv.weight[0, 0, 1, 1] = 1.0  # centre tap of the channel-max map only
    x = torch.tensor([[[[1.0, -2.0]], [[3.0, 0.5]]]])  # (1, 2, 1, 2)
    expected = torch.sigmoid(torch.tensor([[[[3.0, 0.5]]]]))
    assert torch.allclose(gate(x), expected)
    with pytest.raises(ValueError, match="odd"):
        SpatialGate(4)
    assert DestructionGuidance((8, 16), padding=0)(torch.rand(1, 3, 33, 33)).shape == (1, 1, 14, 14)


def test_reconstructor_has_a_global_residual_and_checks_size() -> None:
    net = MIMOUNet(ReconstructorConfig(base_channels=8, num_res_blocks=1))
    with torch.no_grad():
        net.head[0].weight.zero_()
        net.head[0].bias.zero_()
    x = torch.rand(1, 3, 32, 32)
    reconstruction, embedding = net(x)
    assert torch.equal(reconstruction, x)
    assert embedding.shape == (1, 32)
    with pytest.raises(ValueError, match="divisible by 4"):
        net(torch.rand(1, 3, 30, 30))
    with pytest.raises(ValueError, match="divisible by 4"):
        RALF(RALFConfig.tiny(image_size=66))


def test_reconstructor_stage_layout() -> None:
    with torch.device("meta"):
        net = MIMOUNet(ReconstructorConfig())
    assert [len(stage) for stage in net.encoders] == [8, 8, 8]
    assert [len(stage) for stage in net.decoders] == [8, 8, 8]
    assert [stage[0].body[0][0].in_channels for stage in net.encoders] == [32, 64, 128]


def test_discriminator_layout_and_init() -> None:
    config = RALFConfig.paper().discriminator
    disc = Discriminator(config, 256)
    convs = [m for m in disc.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 16, 32, 64, 128, 256, 1]
    assert all(c.stride == (2, 2) for c in convs[:-1]) and convs[-1].kernel_size == (4, 4)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in disc.modules()) == 5
    weights = torch.cat([c.weight.detach().flatten() for c in convs[3:6]])
    assert abs(float(weights.std()) - 0.02) < 0.002
    tiny = RALFConfig.tiny()
    logit = Discriminator(tiny.discriminator, tiny.image_size)(torch.rand(3, 3, 64, 64))
    assert logit.shape == (3,)
    # A non-power-of-two size ends in a wider last kernel instead of failing.
    assert Discriminator(config, 96)(torch.rand(2, 3, 96, 96)).shape == (2,)


def test_every_inference_parameter_gets_gradient_from_the_logit() -> None:
    model = RALF(RALFConfig.tiny()).train()
    model(torch.rand(2, 3, 64, 64)).sum().backward()
    without_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert without_grad == []
