"""``kdkit layers MODEL``: the tappable module paths in execution order with their output shapes
(text and --json), model options with --set, and bad input as one line, exit 2."""
from __future__ import annotations

import json

import pytest

from kdkit import cli


pytestmark = pytest.mark.usefixtures("lean_plugin_manager")


def test_json_lists_paths_in_execution_order_with_shapes(capsys):
    assert cli.main(["layers", "resnet8", "--set", "width=8", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["model"] == "resnet8" and doc["input"] == [3, 32, 32]
    shapes = {layer["path"]: layer["shape"] for layer in doc["layers"]}
    paths = [layer["path"] for layer in doc["layers"]]
    assert paths[0] == "conv1" and paths.index("layer1") < paths.index("layer2") < paths.index("layer3")
    assert shapes["conv1"] == [1, 8, 32, 32]  # width=8 reached the model
    assert shapes["layer2"][2:] == [16, 16] and shapes["layer3"][2:] == [8, 8]
    assert doc["layers"][-1]["path"] == "classifier" and shapes["classifier"] == [1, 10]


def test_text_and_input_size(capsys):
    assert cli.main(["layers", "convnet", "--input", "3x16x16", "--num-classes", "4"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("# convnet, input 3x16x16")
    last = out[-1].split()
    assert last[1] == "1x4" and last[2] == "Linear"


def test_the_tap_hint_draws_on_the_same_listing():
    from kdkit.commands.layers import build_named_model
    from kdkit.distill.taps import probe_layers, tap_candidates

    model = build_named_model("resnet8", 10, {})
    shape, layers = probe_layers(model)
    assert shape == (3, 32, 32)
    assert [layer.path for layer in tap_candidates(layers)] == ["layer1", "layer2", "layer3"]
    assert [layer.path for layer in tap_candidates(layers, spatial=(8, 8))][0] == "layer3"


@pytest.mark.parametrize("argv, message", [
    (["layers", "nope"], "kdkit: error: unknown student 'nope'; valid choices: "),
    (["layers", "resnet8", "--set", "wdth=3"], "unknown option 'wdth'"),
    (["layers", "resnet8", "--set", "width"], "--set 'width': expected KEY=VALUE"),
    (["layers", "resnet8", "--input", "1x2"], "does not run on a 1x2 input"),
    (["layers", "resnet8", "--input", "3x0x2"], "argument --input: expected positive sizes"),
    (["layers", "resnet8", "--num-classes", "0"], "--num-classes must be >= 1"),
])
def test_bad_input_is_one_line(argv, message, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err, err


def test_a_model_of_a_source_and_the_input_it_accepts(capsys):
    """``torchvision:NAME`` resolves through the same registry; a ViT refuses 32 x 32 and is listed at 224."""
    assert cli.main(["layers", "torchvision:mobilenet_v3_small", "--input", "3x64x64", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    shapes = {layer["path"]: layer["shape"] for layer in doc["layers"]}
    assert shapes["features.3"] == [1, 24, 8, 8] and shapes["classifier.3"] == [1, 10]
    from kdkit.distill.taps import Layer, tap_candidates

    layers = [Layer(layer["path"], layer["type"], tuple(layer["shape"] or ())) for layer in doc["layers"]]
    # per resolution the last, shallowest module: the trunk ``features`` itself ends the 2 x 2 stage
    assert [layer.path for layer in tap_candidates(layers)] == [
        "features.0", "features.1", "features.3", "features.8", "features"]


def test_fitnet_and_at_between_torchvision_models_on_paths_from_kdkit_layers(tmp_path, capsys):
    """The issue's use: list both models' maps with `kdkit layers --json`, pair a teacher stage with the
    student map of the same resolution, and distil on them (FitNet, then AT on two pairs)."""
    def maps(model):
        assert cli.main(["layers", model, "--input", "3x32x32", "--json"]) == 0
        return {layer["path"]: layer["shape"] for layer in json.loads(capsys.readouterr().out)["layers"]}

    teacher, student = maps("torchvision:resnet18"), maps("torchvision:mobilenet_v3_small")
    pairs = [(t, next(p for p in ("features.1", "features.3") if student[p][2:] == teacher[t][2:]))
             for t in ("layer1", "layer2")]
    assert pairs == [("layer1", "features.1"), ("layer2", "features.3")]  # 8x8 and 4x4 maps
    base = ["--set", "data.name=shapes", "--set", "data.train_per_class=4", "--set", "data.test_per_class=2",
            "--set", "data.augment=none", "--set", "teachers=[{name: 'torchvision:resnet18'}]",
            "--set", "student.name=torchvision:mobilenet_v3_small", "--set", "teacher_train.epochs=1",
            "--set", "train.epochs=1", "--set", "baseline.enabled=false", "--set", "logging.progress=false"]
    (t, s), = pairs[1:]
    fitnet = f"distill.terms=[{{loss: fitnet, weight: 100, student: '{s}', teacher: '{t}'}}]"
    assert cli.main(["train", "--method", "fitnet", "--out", str(tmp_path / "fitnet"), *base, "--set", fitnet]) == 0
    at = "distill.terms=[" + ", ".join(f"{{loss: at, name: at{i}, weight: 1000, student: '{s}', teacher: '{t}'}}"
                                       for i, (t, s) in enumerate(pairs)) + "]"
    assert cli.main(["train", "--method", "at", "--out", str(tmp_path / "at"), *base, "--set", at]) == 0
    summary = json.loads((tmp_path / "at" / "summary.json").read_text())
    assert [term["student"] for term in summary["distill"]["terms"]] == ["features.1", "features.3"]
    lines = [json.loads(x) for x in (tmp_path / "fitnet" / "metrics.jsonl").read_text().splitlines()]
    assert any("train.fitnet" in x for x in lines if x["stage"] == "student")
