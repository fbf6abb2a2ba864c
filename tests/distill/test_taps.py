"""kdkit.distill.FeatureTaps: intermediate outputs by module path, on any model, without editing it."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from kdkit.distill import FeatureTaps, module_paths
from kdkit.errors import ConfigError


class UsersOwn(nn.Module):
    """A model of a user's own: nested containers, a module used twice, a tuple output."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.blocks = nn.ModuleDict({"a": nn.Sequential(nn.ReLU(), nn.Conv2d(4, 4, 1)), "b": nn.Conv2d(4, 8, 1)})
        self.shared = nn.Identity()
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = self.shared(self.stem(x))
        h = self.blocks["b"](self.shared(self.blocks["a"](h)))
        return self.head(h.mean((2, 3)))


def test_torchvision_resnet_layers_are_the_real_intermediates():
    from torchvision.models import resnet18

    torch.manual_seed(0)
    model = resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad(), FeatureTaps(model, ["layer3", "layer4.1.conv2", "avgpool"]) as taps:
        logits = model(x)
        got = taps.pop()
        # the same intermediates computed by hand
        h = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        h3 = model.layer3(model.layer2(model.layer1(h)))
        torch.testing.assert_close(got["layer3"], h3)
        b = model.layer4[1]
        inner = b.conv2(b.relu(b.bn1(b.conv1(model.layer4[0](h3)))))
        torch.testing.assert_close(got["layer4.1.conv2"], inner)
        torch.testing.assert_close(model.fc(torch.flatten(got["avgpool"], 1)), logits)
    assert got["layer4.1.conv2"].shape == (2, 512, 2, 2)


def test_kdkit_models_and_a_users_own():
    from kdkit.models import CifarResNet

    net = CifarResNet(depth=8, num_classes=10)
    assert "layer3.0.conv1" in module_paths(net)
    with FeatureTaps(net, ["layer2", "layer3.0.conv1"]) as taps:
        net(torch.randn(2, 3, 32, 32))
        assert {k: tuple(v.shape[:2]) for k, v in taps.pop().items()} == {"layer2": (2, 32), "layer3.0.conv1": (2, 64)}

    own = UsersOwn()
    with FeatureTaps(own, ["blocks.a.1", "blocks.b", "shared"]) as taps:
        own(torch.randn(1, 3, 5, 5))
        got = taps.pop()
    assert got["blocks.a.1"].shape == (1, 4, 5, 5) and got["blocks.b"].shape == (1, 8, 5, 5)
    torch.testing.assert_close(got["shared"], got["blocks.a.1"])  # called twice: the last output is kept


def test_wrong_path_names_the_nearest_valid_ones():
    from kdkit.models import CifarResNet

    net = CifarResNet(depth=8, num_classes=10)
    with pytest.raises(ConfigError) as err:
        FeatureTaps(net, ["layer3.0.conv"], owner="student")
    message = str(err.value)
    assert message.startswith("student (CifarResNet) has no module 'layer3.0.conv'")
    assert "layer3.0.conv1" in message and "layer3.0.conv2" in message and "\n" not in message
    with pytest.raises(ConfigError, match="nearest valid paths: .*layer"):
        FeatureTaps(net, ["lyr2"])
    with pytest.raises(ConfigError):
        FeatureTaps(net, [""])


def test_student_taps_carry_gradients_teacher_taps_do_not():
    student, teacher = UsersOwn(), UsersOwn()
    x = torch.randn(2, 3, 4, 4)
    with FeatureTaps(student, ["blocks.b"]) as s_taps, FeatureTaps(teacher, ["blocks.b"], detach=True) as t_taps:
        student(x)
        teacher(x)
        fs, ft = s_taps.pop()["blocks.b"], t_taps.pop()["blocks.b"]
    assert fs.requires_grad and not ft.requires_grad
    ((fs - ft) ** 2).mean().backward()
    assert student.stem.weight.grad is not None and teacher.stem.weight.grad is None


def test_pop_forgets_and_remove_unhooks():
    model = UsersOwn()
    taps = FeatureTaps(model, ["blocks.b"]).attach()
    model(torch.randn(1, 3, 4, 4))
    assert set(taps.pop()) == {"blocks.b"} and taps.pop() == {}
    taps.remove()
    assert not taps.attached and not model.blocks["b"]._forward_hooks
    model(torch.randn(1, 3, 4, 4))
    assert taps.pop() == {}


def test_through_a_ddp_wrapper(tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    started = not dist.is_initialized()
    if started:
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        model = UsersOwn()
        wrapped = DDP(model)
        with FeatureTaps(wrapped, ["module.blocks.b", "stem"]) as taps:
            wrapped(torch.randn(2, 3, 4, 4)).sum().backward()
            got = taps.pop()
        assert set(got) == {"module.blocks.b", "stem"} and got["stem"].shape == (2, 4, 4, 4)
        assert model.stem.weight.grad is not None
    finally:
        if started:
            dist.destroy_process_group()


def test_a_stage_attaches_its_taps_and_removes_them_when_it_ends(tmp_path, manager):
    """The trainer attaches the stage's taps, the step reads them, and they are gone afterwards —
    also when the stage fails."""
    from torch.utils.data import TensorDataset

    from kdkit.engine import RunContext, Stage, TrainingError

    from kdkit.config import base_config, resolve_config

    config = resolve_config(base_config(), sets=["method=test", "device=cpu", "logging.progress=false",
                                                 "train.epochs=1", "train.batch_size=8", "train.lr=0.01",
                                                 "train.scheduler=none"], component_sections={})
    ctx = RunContext(config, tmp_path / "run", manager)
    model = UsersOwn()
    taps = FeatureTaps(model, ["blocks.b"], owner="student")
    data = TensorDataset(torch.randn(16, 3, 4, 4), torch.randint(0, 3, (16,)))
    seen = []

    def step(m, batch):
        logits = m(batch[0])
        seen.append(tuple(taps.pop()["blocks.b"].shape))
        return nn.functional.cross_entropy(logits, batch[1]), {}

    ctx.fit(Stage(name="tapped", model=model, train_data=data, step_fn=step, taps=[taps]))
    assert seen == [(8, 8, 4, 4), (8, 8, 4, 4)] and not taps.attached and not model.blocks["b"]._forward_hooks

    def failing(m, batch):
        m(batch[0])
        assert taps.attached
        return torch.tensor(float("nan"), requires_grad=True), {}

    with pytest.raises(TrainingError):
        ctx.fit(Stage(name="failing", model=model, train_data=data, step_fn=failing, taps=[taps]))
    assert not taps.attached and not model.blocks["b"]._forward_hooks
    ctx.close()


def test_importing_kdkit_distill_loads_no_torch():
    import subprocess
    import sys

    code = "import sys, kdkit.distill; assert 'torch' not in sys.modules, 'torch imported'"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_wrong_path_on_mobilenet_names_its_feature_maps_first():
    """The hint for a ResNet path on MobileNetV3 lists its feature maps per resolution (one forward
    pass, the listing of ``kdkit layers``), before the nearest names (``classifier.3``)."""
    import torchvision

    net = torchvision.models.mobilenet_v3_small(num_classes=10)
    with pytest.raises(ConfigError) as err:
        FeatureTaps(net, ["layer3"], owner="student")
    message = str(err.value)
    maps = message.index("feature maps it can tap, one per resolution: features.0 (16x16x16), features.1 (16x8x8), "
                         "features.3 (24x4x4), features.8 (48x2x2) (for a 3x32x32 input)")
    assert maps < message.index("nearest valid paths: classifier.3") and "\n" not in message
    assert net.training  # the probe left the model in its mode


def test_list_layers_keeps_a_repeated_module_at_its_first_call_with_its_last_shape():
    from kdkit.distill.taps import list_layers

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.pool = nn.AvgPool2d(2)
            self.conv = nn.Conv2d(3, 4, 1)
            self.unused = nn.ReLU()

        def forward(self, x):
            return self.pool(self.conv(self.pool(x)))

    layers = list_layers(Twice(), torch.zeros(1, 3, 8, 8))
    assert [(layer.path, layer.shape) for layer in layers] == [
        ("pool", (1, 4, 2, 2)), ("conv", (1, 4, 4, 4)), ("unused", ())]


def test_wrong_path_hint_puts_first_the_maps_the_size_of_the_paired_path():
    """A feature term pairs a student path with a teacher path: the hint ranks the student's maps by the
    size the teacher's map has on the same probe input, and says which it is."""
    def net(widths_and_strides):
        layers, c = [], 3
        for width, stride in widths_and_strides:
            layers.append(nn.Sequential(nn.Conv2d(c, width, 3, stride, 1), nn.ReLU()))
            c = width
        return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10))

    student = net([(4, 1), (8, 2), (16, 2)])   # maps 32, 16, 8
    teacher = net([(6, 2), (12, 2), (24, 2)])  # maps 16, 8, 4
    with pytest.raises(ConfigError) as err:
        FeatureTaps(student, ["stage2"], owner="student", partners={"stage2": (teacher, "1", "teacher 0")})
    message = str(err.value)
    assert ("feature maps it can tap, one per resolution: 2 (16x8x8), 0 (4x32x32), 1 (8x16x16) "
            "(for a 3x32x32 input; teacher 0's 1 is 12x8x8)") in message
    with pytest.raises(ConfigError, match=r"one per resolution: 0 \(4x32x32\), 1 \(8x16x16\), 2 \(16x8x8\) "
                                          r"\(for a 3x32x32 input\)"):
        FeatureTaps(student, ["stage2"], owner="student")  # no partner: in execution order
