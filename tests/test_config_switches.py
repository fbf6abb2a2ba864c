"""Choosing another component says what came with it (kdkit.config.switches): no silent default swaps."""
from __future__ import annotations

from kdkit.config import resolve_method_config
from kdkit.config.switches import method_component_switches


def test_default_components_say_nothing():
    assert method_component_switches("kd", resolve_method_config("kd")) == []


def test_each_switched_section_lists_what_it_brought_and_dropped():
    config = resolve_method_config("kd", sets=["data.name=imagefolder", "data.root=/nonexistent",
                                               "student.name=resnet20", "teachers.0.name=convnet",
                                               "teachers.0.width=4"], check_files=False)
    data, student, teacher = method_component_switches("kd", config)
    assert data.startswith("data: imagefolder instead of fashion_mnist; its options: image_size=null, "
                           "augment=weak (was none), ")
    assert data.endswith("; dropped with fashion_mnist: train_per_class, test_per_class")
    # kd's student is resnet8 at width 8; resnet20 brings its own width
    assert student.startswith("student: resnet20 instead of resnet8; its options: width=16 (was 8), in_channels=3")
    assert teacher.startswith("teachers.0: convnet instead of resnet14; its options: width=4, in_channels=3")
