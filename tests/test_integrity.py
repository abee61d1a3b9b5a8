"""Hostile run files: flipped metadata bits, lost chunks, files that declare more than they
hold, configs that disagree with the datasets, crafted attributes."""

import json
import struct
import subprocess
import sys

import h5py
import numpy as np
import pytest

from helpers import count, small_config
from zgdyn.analysis.analyze import analyze_run
from zgdyn.cli import main
from zgdyn.store.runner import train_run
from zgdyn.store.journal import RunFileError
from zgdyn.store.reader import verify_run

pytestmark = pytest.mark.heavy  # trains runs, kills processes: not in the inner loop


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    """A small run, analyzed (so it has an analysis/ group), and every dataset's contents."""
    path = tmp_path_factory.mktemp("integrity") / "r.h5"
    train_run(small_config(epochs=200, window=0), path)
    analyze_run(str(path))
    return path, _contents(path)


def _contents(path):
    """{dataset path: array} and {attribute: value} of every object, read with h5py."""
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()])
                     if isinstance(obj, h5py.Dataset) else None)
        out["attrs"] = {k: f.attrs[k] for k in f.attrs}
    return out


def _same(a, b):
    if a.keys() != b.keys():
        return False
    for k in a:
        if k == "attrs":
            if a[k].keys() != b[k].keys() or any(
                    not np.array_equal(a[k][x], b[k][x]) for x in a[k]):
                return False
        elif not (np.shape(a[k]) == np.shape(b[k]) and np.array_equal(
                a[k], b[k], equal_nan=np.asarray(a[k]).dtype.kind == "f")):
            return False  # (lambda_grad is NaN where it is not recorded)
    return True


def _data_extents(path):
    """(offset, size) of every stored chunk and contiguous dataset: the data, not metadata."""
    extents = []
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if not isinstance(obj, h5py.Dataset):
                return
            if obj.chunks is None:
                if obj.id.get_offset() is not None:
                    extents.append((obj.id.get_offset(), obj.id.get_storage_size()))
            else:
                obj.id.chunk_iter(lambda i: extents.append((i.byte_offset, i.size)))
        f.visititems(visit)
    return extents


def _copy(src, dst):
    dst.write_bytes(src.read_bytes())
    return dst


def test_flipped_metadata_bits_are_never_silent(analysed, tmp_path, capsys):
    """Flip one bit at 60 random places in the file's metadata (everything but the data):
    verify either names damage, or everything still reads back as it was; info gives a
    summary or one line, never a traceback."""
    path, original = analysed
    blob = path.read_bytes()
    data = np.zeros(len(blob), bool)
    for off, n in _data_extents(path):
        data[off:off + n] = True
    meta = np.flatnonzero(~data)
    rng = np.random.default_rng(11)
    silent, caught, harmless = [], 0, 0
    for k, at in enumerate(rng.choice(meta, size=60, replace=False)):
        bad = bytearray(blob)
        bad[at] ^= 1 << int(rng.integers(8))
        target = tmp_path / f"f{k}.h5"
        target.write_bytes(bytes(bad))
        try:
            r = verify_run(target)
            ok = r["ok"]
        except RunFileError:  # not recognisable as HDF5 any more: refused in one line
            ok = False
        code = main(["info", str(target)])
        err = capsys.readouterr().err
        assert code in (0, 2) and "Traceback" not in err and err.count("\n") <= 1, err
        if ok:
            if _same(_contents(target), original):
                harmless += 1
            else:
                silent.append(int(at))
        else:
            caught += 1
        count("metadata bits flipped")
    assert not silent, f"verify passed {len(silent)} corrupted files (bytes {silent})"
    assert caught > 0


def _btree_key(blob, chunk_offsets, rank):
    """The byte offset, in a v1 B-tree node of raw-data chunks, of the key of each chunk at
    `chunk_offsets` (file addresses of chunks), by address."""
    keys, key_size, at = {}, 8 + 8 * (rank + 1), blob.find(b"TREE")
    while at >= 0:
        node_type, _, used = struct.unpack_from("<BBH", blob, at + 4)
        if node_type == 1:
            pos = at + 24  # signature, type, level, entries, two sibling addresses
            for _ in range(used):
                child = struct.unpack_from("<Q", blob, pos + key_size)[0]
                if child in chunk_offsets:
                    keys[child] = pos
                pos += key_size + 8
        at = blob.find(b"TREE", at + 4)
    return keys


def test_a_chunk_lost_from_its_index_is_caught(tmp_path, monkeypatch):
    """In a file of HDF5's earliest format (zgdyn's files before it chose checksummed
    indexes), one flipped bit in the chunk index moves checkpoints/fc2.bias record 5
    elsewhere: it reads as zeros, yet every checksum holds. verify must say so."""
    import zgdyn.store.writer
    monkeypatch.setattr(zgdyn.store.writer, "LIBVER", ("earliest", "latest"))
    target = tmp_path / "r.h5"
    train_run(small_config(epochs=200, window=0), target)
    with h5py.File(target, "r") as f:
        ds = f["checkpoints/fc2.bias"]
        infos = []
        ds.id.chunk_iter(infos.append)
        addr = {i.chunk_offset[0]: i.byte_offset for i in infos}
    blob = bytearray(target.read_bytes())
    keys = _btree_key(bytes(blob), set(addr.values()), rank=2)
    row_field = keys[addr[5]] + 8  # chunk size, filter mask, then the record's index
    blob[row_field] ^= 1 << 4  # record 5 becomes record 21: row 5 reads as fill values
    target.write_bytes(bytes(blob))
    with h5py.File(target, "r") as f:
        assert not f["checkpoints/fc2.bias"][5].any()  # the silent damage
    r = verify_run(target)
    assert not r["ok"] and any("checkpoints/fc2.bias" in p for p in r["problems"]), r
    count("hostile files handled")


def test_verify_reads_analysis_too(analysed, tmp_path):
    """A dataset under analysis/ that declares more records than it stores is damage."""
    path, _ = analysed
    target = _copy(path, tmp_path / "r.h5")
    with h5py.File(target, "a") as f:
        ds = f["analysis/trajectory/m_w"]
        ds.resize(ds.shape[0] + 2000, axis=0)  # past its chunk: never written
    r = verify_run(target)
    assert not r["ok"] and any("analysis/trajectory/m_w" in p for p in r["problems"]), r
    count("hostile files handled")


LIMITED = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
from zgdyn.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("command", ["info", "scorecard", "verify"])
def test_a_file_that_declares_a_billion_rows_is_refused_before_reading(analysed, tmp_path,
                                                                        command):
    """metrics/epoch says 10^9 rows in a file of a few hundred KB: one line (exit 2, or
    verify's exit 1), no 7.45 GiB allocation (the process may not have 3 GiB)."""
    path, _ = analysed
    target = _copy(path, tmp_path / "r.h5")
    with h5py.File(target, "a") as f:
        f["metrics/epoch"].resize(10**9, axis=0)
    res = subprocess.run([sys.executable, "-c", LIMITED, command, str(target)],
                         capture_output=True, text=True, timeout=120)
    out = res.stderr if command != "verify" else res.stdout
    assert res.returncode == (1 if command == "verify" else 2), res.stderr
    assert "Traceback" not in res.stderr and "metrics/epoch declares" in out, out
    count("hostile files handled")


def _reseal(f):
    """Recompute the attribute checksum, as a crafted file would (files from before zgdyn
    had one carry none)."""
    try:
        from zgdyn.store.integrity import ATTRS_CRC, attrs_checksum
    except ImportError:
        return
    f.attrs[ATTRS_CRC] = attrs_checksum(f)


def test_a_flipped_bit_in_the_config_attribute_is_caught(analysed, tmp_path, capsys):
    """The config's text lives in HDF5's global heap, which has no checksum: "lr": 0.001
    flipped to 0.003 is still a valid config, and would be read as the run's."""
    path, _ = analysed
    blob = bytearray(path.read_bytes())
    at = blob.find(b'"lr": 0.001') + len(b'"lr": 0.00')
    assert at > 20 and blob[at:at + 1] == b"1"
    blob[at] ^= 0b10  # "1" -> "3"
    target = tmp_path / "r.h5"
    target.write_bytes(bytes(blob))
    assert main(["info", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "attributes (the config among them) fail" in err
    assert not verify_run(target)["ok"]
    count("hostile files handled")


def _with_config(src, dst, **changes):
    """A copy of `src` whose stored config has `changes` (nested keys as section.field)."""
    _copy(src, dst)
    with h5py.File(dst, "a") as f:
        cfg = json.loads(f.attrs["config"])
        for key, value in changes.items():
            section, name = key.split(".")
            cfg[section][name] = value
        f.attrs["config"] = json.dumps(cfg)
        _reseal(f)
    return dst


@pytest.mark.parametrize("change,message", [
    ({"model.hidden": [16]}, "its config's model"),
    ({"data.p": 11}, "its config's model"),
    ({"data.train_frac": 0.3}, "its config's task"),
])
def test_a_config_that_disagrees_with_the_datasets_is_refused(analysed, tmp_path, capsys,
                                                              change, message):
    path, _ = analysed
    target = _with_config(path, tmp_path / "r.h5", **change)
    for cmd in (["info"], ["scorecard"], ["train", "--resume", "--epochs", "300", "--out"],
                ["analyze", "--force", "--no-progress"]):
        code = main([*cmd, str(target)])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and message in err, (cmd, err)
    assert main(["verify", str(target)]) == 1
    assert message in capsys.readouterr().out
    count("hostile files handled")


def _attr(src, dst, name, value):
    _copy(src, dst)
    with h5py.File(dst, "a") as f:
        f.attrs[name] = value
        _reseal(f)
    return dst


@pytest.mark.parametrize("what", ["deep config", "watch_state", "keyframe without checkpoint"])
def test_crafted_attributes_are_one_line_errors(analysed, tmp_path, capsys, what):
    path, _ = analysed
    target = tmp_path / "r.h5"
    if what == "deep config":
        _attr(path, target, "config", "[" * 100_000 + "]" * 100_000)
        cmd, message = ["info"], "config cannot be read"
    elif what == "watch_state":
        _attr(path, target, "watch_state", '{"resting_until": "soon"}')
        cmd, message = ["train", "--resume", "--epochs", "300", "--out"], "watch_state"
    else:
        _copy(path, target)
        with h5py.File(target, "a") as f:
            f["keyframes/epoch"][-1] = 12345
            f.attrs["epochs_done"] = 12345
            _reseal(f)
        cmd, message = ["train", "--resume", "--epochs", "20000", "--out"], \
            "keyframe at epoch 12345 has no checkpoint"
    before = target.read_bytes()
    code = main([*cmd, str(target)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert target.read_bytes() == before
    assert main(["verify", str(target)]) in (1, 2)
    count("hostile files handled")
