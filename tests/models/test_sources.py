"""Models by name, without a plugin (issue 20, items 1 and 3): the sources ``torchvision:NAME``,
``timm:NAME``, ``hf:DIR``, ``py:MODULE:CALLABLE`` / ``py:FILE.py:CALLABLE``, and the one public weight
loader ``kdkit.load_weights`` that every teacher and student — plugin-registered ones included — uses.

Known answers (a built model's head has ``num_classes`` outputs, its weights are the file's, a factory's
options arrive), CLI runs at tiny sizes with zero lines of Python, and every bad input as one line,
exit 2.  Nothing downloads: the Hugging Face directories are tiny random configs saved in tmp_path.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

import kdkit
from kdkit import cli
from kdkit import plugins as kp
from kdkit.config import resolve_method_config
from kdkit.errors import ConfigError, DataError


pytestmark = pytest.mark.usefixtures("clean_plugin_manager")


def _students():
    return kdkit.get_registry("students")


def _same_weights(a: torch.nn.Module, b: torch.nn.Module, skip: str = "\0") -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa if not k.startswith(skip))


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """A tiny random ViT image classifier and BERT sequence classifier, saved with save_pretrained."""
    transformers = pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    small = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    vit = transformers.ViTForImageClassification(
        transformers.ViTConfig(image_size=16, patch_size=8, num_labels=4, **small))
    vit.save_pretrained(root / "vit")
    bert = transformers.BertForSequenceClassification(
        transformers.BertConfig(vocab_size=50, max_position_embeddings=32, num_labels=3, **small))
    bert.save_pretrained(root / "bert")
    return {"vit": root / "vit", "bert": root / "bert", "vit_model": vit}


# --- registration stays cheap --------------------------------------------------------------------

def test_sources_are_listed_without_importing_their_libraries():
    code = ("import sys, kdkit\n"
            "reg = kdkit.get_registry('students')\n"
            "print([s.metadata['form'] for s in reg.sources()], "
            "[m for m in ('torch', 'torchvision', 'timm', 'transformers') if m in sys.modules])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ("['hf:DIR', 'py:MODULE:CALLABLE', 'timm:NAME', 'torchvision:NAME'] []")


# --- torchvision ----------------------------------------------------------------------------------

def test_torchvision_model_has_num_classes_outputs_and_the_files_weights(tmp_path):
    import torchvision

    torch.manual_seed(1)
    source = torchvision.models.mobilenet_v3_small(num_classes=5)
    path = tmp_path / "w.pt"  # saved from a DDP + torch.compile'd model: both prefixes
    torch.save({"state_dict": {f"module._orig_mod.{k}": v for k, v in source.state_dict().items()}}, path)
    component = _students().get("torchvision:mobilenet_v3_small")
    assert {"dropout", "pretrained", "pretrained_key", "pretrained_strict"} <= set(component.options)
    model = component.build(num_classes=5, pretrained=str(path), dropout=0.1)
    assert model.classifier[-1].out_features == 5 and model.classifier[2].p == 0.1
    assert _same_weights(model, source)
    assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 5)


def test_a_resolvable_name_is_in_the_registry_but_not_in_its_listing():
    registry = kdkit.get_registry("teachers")
    assert "torchvision:resnet18" in registry and "resnet8" in registry
    assert "torchvision:resnet_18" not in registry and "nope:x" not in registry and "resnet9" not in registry
    assert "torchvision:resnet18" not in registry.names() and len(registry) == len(registry.names())


def test_every_torchvision_classifier_resolves_with_checkable_options():
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    assert {"mobilenet_v3_small", "efficientnet_b0", "convnext_tiny", "vit_b_16", "resnet18"} <= set(names)
    for name in names:
        component = _students().get(f"torchvision:{name}")
        assert not component.accepts_any and component.loads_weights, name
        assert {"pretrained", "pretrained_key", "pretrained_strict", "weights"} <= set(component.options), name
        assert "num_classes" not in component.options and "progress" not in component.options, name


def test_torchvision_weights_of_another_head_load_all_but_the_head(tmp_path):
    import torchvision

    source = torchvision.models.resnet18(num_classes=1000)
    path = tmp_path / "r18.pt"
    torch.save(source.state_dict(), path)
    model = _students().build("torchvision:resnet18", num_classes=3, pretrained=str(path))
    assert model.fc.out_features == 3
    assert torch.equal(model.conv1.weight, source.conv1.weight) and torch.equal(model.layer4[1].bn2.bias,
                                                                                source.layer4[1].bn2.bias)


def test_torchvision_options_are_checked_when_the_config_is_resolved():
    cfg = resolve_method_config("kd", sets=["student.name=torchvision:resnet18", "student.zero_init_residual=true"])
    assert cfg["student"]["zero_init_residual"] is True and cfg["student"]["pretrained"] is None
    with pytest.raises(ConfigError, match=r"unknown config key 'student.depth'; valid keys at student: name, "
                                          r".*zero_init_residual"):
        resolve_method_config("kd", sets=["student.name=torchvision:resnet18", "student.depth=3"])


def test_googlenet_gives_plain_logits_in_training():
    model = _students().build("torchvision:googlenet", num_classes=3, init_weights=False)
    assert isinstance(model.train()(torch.randn(2, 3, 64, 64)), torch.Tensor)


# --- timm -----------------------------------------------------------------------------------------

def test_timm_model_takes_its_class_options():
    pytest.importorskip("timm")
    component = _students().get("timm:test_resnet")
    assert {"drop_rate", "in_chans", "global_pool"} <= set(component.options)
    model = component.build(num_classes=6, drop_rate=0.25)
    assert model.drop_rate == 0.25 and model.get_classifier().out_features == 6
    assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 6)


# --- Hugging Face ---------------------------------------------------------------------------------

def test_hf_image_classifier_loads_the_directory_and_returns_logits(hf_dirs):
    component = kdkit.get_registry("teachers").get(f"hf:{hf_dirs['vit']}")
    assert "hidden_dropout_prob" in component.options and "image classifier" in component.description
    model = component.build(num_classes=4)
    assert model.eval()(torch.randn(2, 3, 16, 16)).shape == (2, 4)
    expected = hf_dirs["vit_model"].vit.embeddings.cls_token
    assert torch.equal(model.model.vit.embeddings.cls_token, expected)  # the directory's weights
    other = component.build(num_classes=7)  # another number of classes: a fresh head
    assert other.eval()(torch.randn(1, 3, 16, 16)).shape == (1, 7)


def test_hf_sequence_classifier_takes_ids_or_a_batch_dict(hf_dirs):
    model = _students().build(f"hf:{hf_dirs['bert']}", num_classes=3).eval()
    ids = torch.randint(1, 50, (2, 7), generator=torch.Generator().manual_seed(0))
    ids[1, 5:] = 0  # BERT's pad_token_id: masked out, as the tokenizer's attention_mask would
    assert model(ids).shape == (2, 3)
    assert torch.allclose(model({"input_ids": ids, "attention_mask": ids.ne(0).long()}), model(ids))


def test_hf_checkpoint_with_or_without_the_wrappers_model_prefix(hf_dirs, tmp_path):
    name = f"hf:{hf_dirs['vit']}"
    torch.manual_seed(3)
    trained = _students().build(name, num_classes=4)
    for p in trained.parameters():
        p.data.add_(1.0)
    torch.save({"model": trained.state_dict()}, tmp_path / "kdkit.pt")  # keys "model.vit..."
    torch.save({k.removeprefix("model."): v for k, v in trained.state_dict().items()}, tmp_path / "bare.pt")
    for file in ("kdkit.pt", "bare.pt"):
        assert _same_weights(_students().build(name, num_classes=4, pretrained=str(tmp_path / file)), trained)


# --- your own factory -----------------------------------------------------------------------------

FACTORY = '''
import torch
from torch import nn


def make(num_classes, width: int = 4, act: str = "relu"):
    """a two-layer MLP for tests"""
    net = nn.Sequential(nn.Flatten(), nn.LazyLinear(width), nn.ReLU() if act == "relu" else nn.Tanh(),
                        nn.Linear(width, num_classes))
    net.options = {"width": width, "act": act}
    return net


def open_factory(num_classes, **options):
    net = nn.Linear(4, num_classes)
    net.options = options
    return net


def broken(num_classes):
    raise RuntimeError("no GPU named 'tpu0'\\nsecond line")


def not_a_module(num_classes):
    return "a string"
'''


@pytest.fixture
def factory_file(tmp_path):
    path = tmp_path / "my_models.py"
    path.write_text(FACTORY)
    return path


def test_py_factory_from_a_file_declares_and_receives_its_options(factory_file):
    component = _students().get(f"py:{factory_file}:make")
    assert component.description == "a two-layer MLP for tests"
    assert component.options["width"].default == 4 and component.options["act"].type is str
    assert component.build(num_classes=3, width=8).options == {"width": 8, "act": "relu"}
    with pytest.raises(ConfigError, match=r"unknown option 'widht'; valid options: act, pretrained, pretrained_key, "
                                          r"pretrained_strict, width$"):
        component.build(num_classes=3, widht=8)


def test_py_factory_from_a_module_with_open_options(factory_file, monkeypatch):
    monkeypatch.syspath_prepend(str(factory_file.parent))
    component = _students().get("py:my_models:open_factory")
    assert component.accepts_any
    assert component.build(num_classes=2, anything=5).options == {"anything": 5}
    cfg = resolve_method_config("kd", sets=["student.name=py:my_models:make", "student.width=16"])
    assert cfg["student"] == {"name": "py:my_models:make", "width": 16, "act": "relu", "pretrained": None,
                              "pretrained_key": None, "pretrained_strict": True}


# --- one loader for every model, plugin-registered ones included ----------------------------------

class _PluginTeacher:
    """A third-party teacher that declares no weight option."""

    @kdkit.hookimpl
    def kdkit_register_teachers(self, register):
        register("plugin_net", lambda num_classes, width=4: torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, width), torch.nn.Linear(width, num_classes)),
            description="a plugin teacher", options={"width": kdkit.ConfigKey(4, "hidden units")})


def test_a_plugin_teacher_takes_pretrained_and_kdkit_loads_it(tmp_path):
    with kp.plugin_manager_for_testing(_PluginTeacher()) as manager:
        registry = manager.registry("teachers")
        source = registry.build("plugin_net", num_classes=3)
        torch.save({"model": {f"model.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "t.pt")
        cfg = resolve_method_config("kd", sets=["teachers.0.name=plugin_net", "teachers.0.train=false",
                                                f"teachers.0.pretrained={tmp_path}/t.pt"], manager=manager)
        section = {k: v for k, v in cfg["teachers"][0].items() if k not in ("name", "train", "cache")}
        assert section == {"width": 4, "pretrained": f"{tmp_path}/t.pt", "pretrained_key": None,
                           "pretrained_strict": True}
        assert _same_weights(registry.build("plugin_net", num_classes=3, **section), source)


def test_load_weights_is_public_and_matches_prefixes_both_ways(tmp_path):
    from torch import nn

    class Wrapped(nn.Module):  # keys "model.0.weight", as a wrapper module saves them
        def __init__(self):
            super().__init__()
            self.model = nn.Sequential(nn.Linear(2, 2))

    bare = nn.Sequential(nn.Linear(2, 2))
    torch.save(Wrapped().state_dict(), tmp_path / "wrapped.pt")
    report = kdkit.load_weights(bare, tmp_path / "wrapped.pt")
    assert report["loaded"] == ["0.bias", "0.weight"]
    torch.save({"net": {"_orig_mod.0.weight": bare[0].weight, "_orig_mod.0.bias": bare[0].bias}}, tmp_path / "c.pt")
    wrapped = Wrapped()
    kdkit.load_weights(wrapped, tmp_path / "c.pt", "net", True)
    assert torch.equal(wrapped.model[0].weight, bare[0].weight)
    with pytest.raises(DataError, match="never downloads"):
        kdkit.load_weights(bare, tmp_path / "nope.pt")


# --- zero lines of Python: CLI runs at tiny sizes -------------------------------------------------

TINY = ["--set", "data.name=shapes", "--set", "data.num_classes=3", "--set", "data.train_per_class=6",
        "--set", "data.test_per_class=2", "--set", "train.epochs=1", "--set", "train.batch_size=8",
        "--set", "teacher_train.epochs=1", "--set", "teacher_train.batch_size=8", "--set", "baseline.enabled=false",
        "--set", "logging.progress=false"]


def _train(tmp_path, method: str, *sets: str) -> dict:
    argv = ["train", "--method", method, "--out", str(tmp_path / "run"), *TINY]
    for item in sets:
        argv += ["--set", item]
    assert cli.main(argv) == 0
    return json.loads((tmp_path / "run" / "summary.json").read_text())


@pytest.mark.slow
def test_cli_dkd_torchvision_teacher_from_a_file_to_a_torchvision_student(tmp_path):
    import torchvision

    torch.save(torchvision.models.resnet18(num_classes=1000).state_dict(), tmp_path / "r18.pt")
    summary = _train(tmp_path, "dkd", "teachers.0.name=torchvision:resnet18", "teachers.0.train=false",
                     f"teachers.0.pretrained={tmp_path}/r18.pt", "student.name=torchvision:mobilenet_v3_small")
    assert summary["student"]["top1"] is not None
    assert (tmp_path / "run" / "checkpoints" / "student" / "best.pt").is_file()


@pytest.mark.slow
def test_cli_timm_student(tmp_path):
    pytest.importorskip("timm")
    summary = _train(tmp_path, "kd", "teachers=[{name: convnet, width: 4}]", "student.name=timm:test_resnet",
                     "student.drop_rate=0.1")
    assert summary["student"]["top1"] is not None


@pytest.mark.slow
def test_cli_hf_teacher_and_student_from_a_local_directory(tmp_path, hf_dirs):
    vit = hf_dirs["vit"]
    summary = _train(tmp_path, "kd", "data.image_size=16", f"teachers.0.name=hf:{vit}", "teachers.0.train=false",
                     f"teachers.0.pretrained={vit}/model.safetensors", f"student.name=hf:{vit}",
                     "student.hidden_dropout_prob=0.0")
    assert summary["student"]["top1"] is not None


@pytest.mark.slow
def test_cli_py_factory_student(tmp_path, factory_file):
    summary = _train(tmp_path, "kd", "teachers=[{name: convnet, width: 4}]", f"student.name=py:{factory_file}:make",
                     "student.width=8", "student.act=tanh")
    assert summary["student"]["top1"] is not None


# --- bad input: one line, exit 2 ------------------------------------------------------------------

def _no_timm_module(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError


BAD = {
    "unknown torchvision name": (["student.name=torchvision:mobilenet_v3_smal"],
                                 "unknown torchvision model 'mobilenet_v3_smal'; did you mean mobilenet_v3_small"),
    "unknown timm name": (["student.name=timm:resnet_18x"], "unknown timm model 'resnet_18x'; did you mean resnet18"),
    "timm hub id": (["student.name=timm:hf-hub:timm/resnet18.a1_in1k"], "kdkit never downloads models"),
    "unknown source": (["student.name=tv:resnet18"], "or a name from a source: hf:DIR, py:MODULE:CALLABLE"),
    "unknown torchvision option": (["student.name=torchvision:resnet18", "student.width=3"],
                                   "unknown config key 'student.width'; valid keys at student: name, "),
    "torchvision weights enum": (["student.name=torchvision:resnet18", "student.weights=IMAGENET1K_V1"],
                                 "config key student.weights: kdkit never downloads weights ('IMAGENET1K_V1'); "
                                 "download them elsewhere and pass the local file as student.pretrained"),
    "pretrained true": (["student.name=torchvision:resnet18", "student.pretrained=true"],
                        "config key student.pretrained: expected path of a local file or null, got bool"),
    "pretrained hub id": (["teachers.0.name=timm:test_resnet", "teachers.0.pretrained=timm/resnet18.a1_in1k"],
                          "config key teachers.0.pretrained: file not found: timm/resnet18.a1_in1k (kdkit never "
                          "downloads it"),
    "missing hf directory": (["student.name=hf:{tmp}/no_model"], "student 'hf:{tmp}/no_model': no such local "
                                                                 "directory (kdkit never downloads models"),
    "hf hub id": (["student.name=hf:google/vit-base-patch16-224"], "no such local directory (kdkit never downloads"),
    "missing py module": (["student.name=py:no_such_models:make"], "no module named 'no_such_models'"),
    "missing py file": (["student.name=py:{tmp}/nope.py:make"], "student 'py:{tmp}/nope.py:make': file not found"),
    "missing py callable": (["student.name=py:{factory}:mkae"], "has no 'mkae'"),
    "factory raises": (["teachers.0.name=py:{factory}:broken"],
                       "py:{factory}:broken failed to build the model: RuntimeError: no GPU named 'tpu0'"),
    # the student is built after the teachers train: the models are built once before anything trains
    "student factory raises": (["student.name=py:{factory}:broken"],
                               "py:{factory}:broken failed to build the model: RuntimeError: no GPU named 'tpu0'"),
    "factory returns no module": (["teachers.0.name=py:{factory}:not_a_module"],
                                  "py:{factory}:not_a_module returned str, not a torch.nn.Module"),
}


@pytest.mark.parametrize("sets, message", BAD.values(), ids=BAD.keys())
def test_bad_model_name_is_one_line_and_exit_2(sets, message, tmp_path, factory_file, capsys):
    fill = {"tmp": str(tmp_path), "factory": str(factory_file)}
    argv = ["train", "--method", "kd", "--out", str(tmp_path / "run"), *TINY]
    for item in sets:
        argv += ["--set", item.format(**fill)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    if "failed to build" in message or "returned" in message:  # known when the model is built: the run's log lines, no epoch, one error line
        log, _, err = err.rpartition("kdkit: error: ")
        assert "epoch" not in log and "Traceback" not in log, log
        err = "kdkit: error: " + err
    else:  # known when the config is resolved: nothing else printed, no run directory
        assert not (tmp_path / "run").exists()
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith("kdkit: error: ") and message.format(**fill) in err, err


def test_timm_without_timm_names_the_extra(monkeypatch, capsys, tmp_path):
    _no_timm_module(monkeypatch)
    assert cli.main(["train", "--out", str(tmp_path / "run"), "--set", "student.name=timm:resnet18"]) == 2
    err = capsys.readouterr().err
    assert err == "kdkit: error: student 'timm:resnet18': needs the timm package: pip install 'kdkit[timm]'\n"


def test_hf_without_transformers_names_the_extra(monkeypatch, capsys, hf_dirs):
    monkeypatch.setitem(sys.modules, "transformers", None)
    assert cli.main(["train", "--set", f"student.name=hf:{hf_dirs['vit']}", "--print-config"]) == 2
    assert "needs the transformers package: pip install 'kdkit[hf]'" in capsys.readouterr().err


def test_a_py_file_that_fails_to_import_is_one_line(tmp_path, capsys):
    (tmp_path / "bad.py").write_text(textwrap.dedent("""\
        import torch
        raise ImportError("needs the package foo")
        """))
    assert cli.main(["train", "--set", f"student.name=py:{tmp_path}/bad.py:make", "--print-config"]) == 2
    assert f"importing {tmp_path}/bad.py failed: ImportError: needs the package foo" in capsys.readouterr().err
