"""Property-based tests: invalid configs, CLI arguments and TOML files get a one-line error,
exit code 2, never a traceback, and create or change no file."""

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import count
from zgdyn.cli import main
from zgdyn.core.config import Config, ConfigError, flatten, from_flat, load_toml

FIELDS = list(flatten(Config()))
values = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                   st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
                   st.lists(st.integers(-5, 300), max_size=4))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(FIELDS + ["bogus", "hiden"]), values, max_size=4))
def test_any_config_is_valid_or_a_config_error(changes):
    count("configs tried")
    try:
        cfg = from_flat({**flatten(Config()), **changes})
    except ConfigError as e:
        assert "\n" not in str(e) and ":" in str(e)  # names the field
        count("bad configs rejected")
        return
    assert isinstance(cfg, Config)


# flags that are always invalid, so a fuzzed command line can never start a real run
INVALID = [["--p", "1"], ["--train-frac", "1.5"], ["--zipf-s", "-1"], ["--hidden", "0"],
           ["--lr", "0"], ["--epochs", "0"], ["--eval-every", "-3"], ["--weighting", "x"],
           ["--dtype", "half"], ["--device", "gpu"], ["--beta1", "1"], ["--seed", "-1"]]
FLAG_VALUES = {"--p": st.integers(-5, 200).map(str), "--train-frac": st.floats().map(str),
               "--zipf-s": st.floats().map(str), "--lr": st.floats().map(str),
               "--hidden": st.integers(-3, 300).map(str), "--epochs": st.text(max_size=5),
               "--init": st.text(max_size=6), "--keyframe-every": st.integers(-9, 99).map(str)}


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(INVALID), st.dictionaries(st.sampled_from(sorted(FLAG_VALUES)),
                                                   st.just(None), max_size=3), st.data())
def test_bad_command_lines_exit_2_with_one_line(tmp_path_factory, capsys, bad, extra, data):
    work = tmp_path_factory.mktemp("cli")
    args = ["train", "--out", str(work / "r.h5"), "--no-progress"]
    for flag in extra:
        args += [flag, data.draw(FLAG_VALUES[flag])]
    args += bad  # last, so it overrides a fuzzed duplicate
    try:
        code = main(args)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, (args, err)
    assert err.count("\n") == 1 and "Traceback" not in err
    assert os.listdir(work) == []
    count("bad command lines tried")


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=120))
def test_any_toml_text_loads_or_is_a_config_error(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("toml") / "c.toml"
    path.write_text(text, encoding="utf-8")
    before = path.read_bytes()
    try:
        load_toml(path)
    except ConfigError as e:
        assert "\n" not in str(e).strip() or "TOML" in str(e)
        count("bad TOML files rejected")
    assert path.read_bytes() == before
    count("TOML files tried")


@pytest.mark.parametrize("text", ["[data]\np = 'x'\n", "[model]\nhidden = [1, 'a']\n",
                                  "[schedule]\nepochs = 1.5\n", "seed = [1]\n", "data = 3\n",
                                  "[optim]\nlr = -1\n", "[record]\nckpt_every = 0\n"])
def test_typed_toml_errors_are_one_line(tmp_path, capsys, text):
    path = tmp_path / "c.toml"
    path.write_text(text)
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "r.h5")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.toml"]
    count("bad command lines tried")
