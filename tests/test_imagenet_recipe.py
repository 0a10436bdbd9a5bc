"""The SACT ImageNet recipe: torchvision's weights as the starting point, Inception
preprocessing, inputs in [-1, 1]."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image

from harness.config import DataConfig, RunConfig, validate_run_config
from harness.contract import ModelSpec
from harness.data import normalize
from harness.data.loaders import INCEPTION_EVAL_FRACTION, _central_crop, _folder_transforms
from harness.errors import CheckpointError, ConfigError
from harness.models import create_model
from harness.runs import init_from_source

IMAGENET50 = ModelSpec(dataset="imagenet", depth=50, variant="torchvision")


@pytest.fixture(scope="module")
def torchvision_resnet50(tmp_path_factory) -> tuple[Path, dict]:
    """A (randomly initialised) torchvision ResNet-50 state dict saved as torchvision saves it."""
    torch.manual_seed(7)
    state = torchvision.models.resnet50().state_dict()
    path = tmp_path_factory.mktemp("tv") / "resnet50.pth"
    torch.save(state, path)
    return path, state


def test_init_from_torchvision_copies_every_backbone_weight(torchvision_resnet50):
    path, state = torchvision_resnet50
    model = create_model("act", dataset="imagenet", depth=50, variant="torchvision")
    cfg = RunConfig(method="act", model=IMAGENET50)
    fresh = init_from_source(model, f"torchvision:resnet50={path}", cfg)
    assert fresh and all(k.startswith("halting.") for k in fresh)  # the halting branches
    ours = model.backbone.state_dict()
    assert torch.equal(ours["stem.conv.weight"], state["conv1.weight"])
    assert torch.equal(ours["blocks.3.2.conv3.weight"], state["layer4.2.conv3.weight"])
    assert torch.equal(
        ours["blocks.1.0.shortcut_conv.weight"], state["layer2.0.downsample.0.weight"]
    )
    assert torch.equal(ours["head.fc.weight"], state["fc.weight"])
    # and the backbone computes torchvision's function
    reference = torchvision.models.resnet50()
    reference.load_state_dict(state)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model.backbone.eval()(images), reference.eval()(images), atol=1e-4)


@pytest.mark.parametrize(
    ("source", "spec", "message"),
    [
        ("torchvision:resnet101", IMAGENET50, "backbone is resnet50 (model.depth=50); use"),
        (
            "torchvision:resnet50",
            ModelSpec(dataset="imagenet", depth=50, variant="sact"),
            "only the ImageNet 'torchvision' backbone takes torchvision weights",
        ),
        ("torchvision:resnet50=/no/such/file.pth", IMAGENET50, "no file /no/such/file.pth"),
    ],
)
def test_bad_torchvision_sources_are_one_line(source, spec, message):
    model = create_model("resnet", dataset=spec.dataset, depth=spec.depth, variant=spec.variant)
    with pytest.raises(CheckpointError, match=re.escape(message)):
        init_from_source(model, source, RunConfig(model=spec))


def test_inception_preprocessing_crops_distorts_and_scales_to_minus_one_one():
    train, evaluation = _folder_transforms("imagenet", (224, 224), True, 0, "inception")
    image = Image.fromarray(
        (torch.arange(300 * 200 * 3) % 251).to(torch.uint8).view(200, 300, 3).numpy()
    )
    # evaluation: the central 87.5% of each side, resized to 224x224
    cropped = _central_crop(image)
    assert cropped.size == (
        round(300 * INCEPTION_EVAL_FRACTION),
        round(200 * INCEPTION_EVAL_FRACTION),
    )
    left = (300 - cropped.size[0]) // 2
    assert cropped.getpixel((0, 0)) == image.getpixel((left, (200 - cropped.size[1]) // 2))
    assert tuple(evaluation(image).shape) == (3, 224, 224)
    torch.manual_seed(0)
    out = train(image)
    assert out.dtype == torch.uint8 and tuple(out.shape) == (3, 224, 224)
    # inputs in [-1, 1]
    x = torch.tensor([0.0, 0.25, 1.0]).view(1, 3, 1, 1)
    assert normalize(x, "inception").flatten().tolist() == [-1.0, -0.5, 1.0]


def test_inception_preprocessing_is_imagenet_only():
    cfg = RunConfig(data=DataConfig(preprocessing="inception"))
    with pytest.raises(ConfigError, match="data.preprocessing='inception' is the SACT ImageNet"):
        validate_run_config(cfg)
