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
