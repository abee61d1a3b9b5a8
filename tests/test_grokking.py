"""Full-size checks against the essay's figures (marked slow: minutes each)."""

import pytest

from zgdyn import Config, ScheduleConfig
from zgdyn.core.train import MetricsLog, Trainer


@pytest.mark.slow
@pytest.mark.parametrize("init", ["lecun", "torch"])
def test_default_config_groks_within_factor_2_of_essay(init):
    cfg = Config(schedule=ScheduleConfig(epochs=30_000)).replace(init=init)
    log = MetricsLog()
    Trainer(cfg).run([log])
    test_acc, epoch = log.array("test_acc"), log.array("epoch")
    first = epoch[test_acc >= 0.95][0]
    assert 7_000 <= first <= 28_000  # essay: 14,000
    assert test_acc[-1] >= 0.99
