"""Built-in models: registration, forward shapes, local pretrained weights."""
import logging

import pluggy
import pytest
import torch

import kdkit.models.builtin as builtin
from kdkit import hookspecs
from kdkit.errors import ConfigError, DataError, KdkitError
from kdkit.models import MODELS, build_model, load_weights


def collect(hook_name):
    """name -> registered target of the models plugin, through the real hook spec."""
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    pm.register(builtin)
    seen = {}

    def register(name, target, description="", *, options=None, **metadata):
        assert description and options is not None  # every built-in model declares its options
        if not name.endswith(":"):  # "torchvision:" and co. are sources (tests/models/test_sources.py)
            seen.setdefault(name, target)

    getattr(pm.hook, hook_name)(register=register)
    return seen


def test_teachers_and_students_are_the_same_table():
    teachers, students = collect("kdkit_register_teachers"), collect("kdkit_register_students")
    assert set(teachers) == set(students) == set(MODELS)
    assert {"resnet18", "resnet50", "resnet8", "resnet14", "resnet20", "cifar_resnet18", "convnet"} <= set(teachers)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_forward_shapes_at_32px(name):
    torch.manual_seed(0)
    model = collect("kdkit_register_students")[name](7)
    model.eval()
    batch = 2 if name in ("resnet50", "resnet34", "resnet32x4") else 3
    x = torch.randn(batch, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
        feats = model.forward_features(x)
    assert out.shape == (batch, 7)
    assert feats.shape == (batch, model.feature_dim)
    assert isinstance(model.classifier, torch.nn.Linear) and model.classifier.out_features == 7


def test_options_and_errors():
    m = build_model("resnet8", 5, width=8)
    assert m.feature_dim == 32
    assert build_model("resnet18", 3, in_channels=1).eval()(torch.randn(1, 1, 32, 32)).shape == (1, 3)
    with pytest.raises(ConfigError, match="valid options"):
        build_model("resnet8", 5, depth=3)


def test_pretrained_same_shape_roundtrip(tmp_path):
    src = build_model("resnet8", 10)
    path = tmp_path / "w.pt"
    torch.save(src.state_dict(), path)
    dst = build_model("resnet8", 10, pretrained=str(path))
    for k, v in src.state_dict().items():
        assert torch.equal(v, dst.state_dict()[k])


def test_pretrained_checkpoint_dict_with_prefix_and_new_head(tmp_path, caplog):
    src = build_model("convnet", 10)
    state = {f"module.{k}": v for k, v in src.state_dict().items()}
    path = tmp_path / "ckpt.pt"
    torch.save({"epoch": 3, "state_dict": state, "config": {"lr": 0.1}}, path)
    with caplog.at_level(logging.WARNING, logger="kdkit.models"):
        dst = build_model("convnet", 4, pretrained=str(path))
    assert "all but the classifier" in caplog.text
    assert torch.equal(dst.features[0].weight, src.features[0].weight)
    assert dst.classifier.out_features == 4


def test_torchvision_state_dict_loads_into_resnet18(tmp_path):
    import torchvision

    tv = torchvision.models.resnet18(weights=None, num_classes=1000)
    path = tmp_path / "resnet18.pth"
    torch.save(tv.state_dict(), path)
    model = build_model("resnet18", 10, pretrained=str(path))
    assert torch.equal(model.conv1.weight, tv.conv1.weight)
    assert model.fc.out_features == 10


def test_pretrained_errors(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path / "missing.pt")):
        build_model("resnet8", 10, pretrained=str(tmp_path / "missing.pt"))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"garbage")
    with pytest.raises(DataError, match="junk.pt"):
        build_model("resnet8", 10, pretrained=str(junk))
    other = tmp_path / "other.pt"
    torch.save(build_model("convnet", 10).state_dict(), other)
    with pytest.raises(KdkitError, match="does not fit"):
        load_weights(build_model("resnet8", 10), other)
    nested = tmp_path / "nested.pt"
    torch.save({"a": {"x": 1}, "b": 2}, nested)
    with pytest.raises(DataError, match="pretrained_key"):
        build_model("resnet8", 10, pretrained=str(nested))
