from pathlib import Path

import pytest

from zgdyn.core.config import Config, ConfigError, flatten, from_dict, from_flat, load_toml

EXPERIMENTS = sorted(p for p in (Path(__file__).parent.parent / "experiments").glob("*.toml")
                     if not p.name.startswith(("suite_", "sweep_")))  # tested in test_suite
                                                                       # and test_sweep


def test_round_trips_through_dict_and_flat():
    cfg = Config().replace(zipf_s=1.5, hidden=(64, 32), switch_s=2.0, switch_at_epoch=10)
    assert from_dict(cfg.to_dict()) == cfg
    assert from_flat(flatten(cfg)) == cfg


def test_defaults_are_the_reference_setup():
    c = Config()
    assert (c.data.p, c.data.train_frac, c.seed) == (97, 0.3, 42)
    assert c.model.hidden == (128, 128) and c.model.init == "lecun"
    assert (c.optim.lr, c.optim.weight_decay, c.optim.beta1, c.optim.beta2, c.optim.eps) == \
        (1e-3, 1.0, 0.9, 0.999, 1e-8)


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.name for p in EXPERIMENTS])
def test_experiment_configs_load(path):
    cfg = load_toml(path)
    assert cfg.data.p == 97


def test_unknown_flat_field():
    with pytest.raises(ConfigError, match="zipf: unknown config field"):
        Config().replace(zipf=1.0)
