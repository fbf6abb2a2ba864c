"""The run's frozen config view (kdkit.config.view): attribute reads, no writes, plain types out."""
from __future__ import annotations

import copy
import json
import pickle

import pytest
import yaml

from kdkit.config import dump_yaml
from kdkit.config.view import FrozenConfig, FrozenList, freeze_config, thaw_config
from kdkit.seeding import derive_seed

CONFIG = {"seed": 3, "train": {"lr": 0.05, "milestones": [10, 20]},
          "teachers": [{"name": "resnet8", "train": {}}], "relax": {}}


def test_sections_and_values_read_as_attributes_and_items():
    cfg = freeze_config(CONFIG)
    assert cfg.train.lr == 0.05 and cfg["train"]["lr"] == 0.05
    assert cfg.teachers[0].name == "resnet8" and cfg.relax == {}
    assert cfg.train.milestones == [10, 20] and isinstance(cfg.train.milestones, FrozenList)
    assert cfg == CONFIG and isinstance(cfg, dict)


def test_a_missing_key_names_the_keys_that_exist():
    cfg = freeze_config(CONFIG)
    with pytest.raises(AttributeError, match=r"config key 'train\.learning_rate' does not exist; keys of train: "
                                             r"lr, milestones"):
        cfg.train.learning_rate
    with pytest.raises(KeyError):
        cfg["nope"]


@pytest.mark.parametrize("change", [
    lambda c: c.train.__setitem__("lr", 1.0),
    lambda c: setattr(c, "seed", 1),
    lambda c: c.train.update(lr=1.0),
    lambda c: c.teachers[0].pop("name"),
    lambda c: c.relax.setdefault("x", 1),
    lambda c: c.train.__delitem__("lr"),
    lambda c: c.clear(),
])
def test_every_way_to_change_it_raises_and_changes_nothing(change):
    cfg = freeze_config(CONFIG)
    with pytest.raises(TypeError, match="the resolved config is frozen"):
        change(cfg)
    assert cfg == CONFIG
    with pytest.raises((TypeError, AttributeError)):
        cfg.train.milestones.append(30)


def test_it_is_a_copy_and_thaws_to_plain_types():
    source = copy.deepcopy(CONFIG)
    cfg = freeze_config(source)
    source["train"]["lr"] = 9.0
    assert cfg.train.lr == 0.05
    plain = cfg.to_dict()
    assert plain == CONFIG and type(plain) is dict and type(plain["train"]["milestones"]) is list
    assert type(plain["teachers"][0]) is dict
    assert yaml.safe_load(dump_yaml(plain)) == CONFIG
    assert thaw_config(cfg) == plain


def test_serialised_forms_and_seeds_are_those_of_the_plain_config():
    """json, repr (which seeds and cache keys are made from) and pickle see the plain config: freezing
    the config changes no seed, no cache key and no number of a run."""
    cfg = freeze_config(CONFIG)
    assert json.dumps(cfg, sort_keys=True) == json.dumps(CONFIG, sort_keys=True)
    assert repr(cfg) == repr(CONFIG) and repr(cfg.train.milestones) == "[10, 20]"
    assert derive_seed(0, "x", cfg.train.milestones) == derive_seed(0, "x", [10, 20])
    again = pickle.loads(pickle.dumps(cfg))
    assert isinstance(again, FrozenConfig) and again == CONFIG and again.train.lr == 0.05
    assert copy.deepcopy(cfg) is cfg and freeze_config(cfg) is cfg
    with pytest.raises(yaml.representer.RepresenterError):
        yaml.safe_dump(cfg)  # the reason to_dict exists
