"""A damaged file never loads, and never changes anything: truncation at any length, a
flipped byte anywhere (length prefix, safetensors header, metadata document, array data),
checksum mismatches, a file from a newer format, and files that are not optdsl
checkpoints all raise a clear error, and the optimizer, schedule, params and scaler are
exactly as they were."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("safetensors", reason="checkpoints need safetensors (extra 'checkpoint')")

from ckpt_util import TinyScaler, build, fingerprint, rewrite, run  # noqa: E402

import optdsl  # noqa: E402
from optdsl.checkpoint import FORMAT_VERSION  # noqa: E402


@pytest.fixture
def saved(tmp_path):
    """A small checkpoint of a trained Adam run, and a second run (other values) to load
    it into."""
    opt, sched, params = build("Adam")
    scaler = TinyScaler()
    run(opt, sched, params, scaler, 1, 3)
    path = tmp_path / "ckpt.safetensors"
    optdsl.save(path, optimizer=opt, scheduler=sched, params=params, scaler=scaler,
                extra={"epoch": 1})
    target = build("Adam", seed=5)
    live_scaler = TinyScaler(scale=3.0)
    run(*target, live_scaler, 1, 2)
    return path, (*target, live_scaler)


def _load(path, target):
    opt, sched, params, scaler = target
    return optdsl.load(path, optimizer=opt, scheduler=sched, params=params, scaler=scaler)


def _sections(data: bytes) -> dict[str, range]:
    """Byte ranges: the 8-byte length, the safetensors header outside the metadata, the
    metadata document, and the array data."""
    n = int.from_bytes(data[:8], "little")
    header = data[8:8 + n]
    doc_start = header.index(b'"optdsl.checkpoint":"') + len('"optdsl.checkpoint":"')
    text = json.loads(header)["__metadata__"]["optdsl.checkpoint"]
    doc_end = doc_start + len(json.dumps(text)) - 2  # as escaped inside the header
    assert header[doc_end:doc_end + 1] == b'"'
    tensor_part = header.index(b'"optimizer.state.', doc_end)  # outside the metadata
    return {"length": range(0, 8), "header": range(8 + tensor_part, 8 + tensor_part + 200),
            "metadata": range(8 + doc_start, 8 + doc_end), "data": range(8 + n, len(data))}


def test_every_truncation_is_detected(saved):
    path, target = saved
    data = path.read_bytes()
    before = fingerprint(*target, ids=True)
    sizes = sorted({*range(0, 64), *range(0, len(data), 97), len(data) - 1, len(data) - 8})
    for size in sizes:
        path.write_bytes(data[:size])
        with pytest.raises(optdsl.CheckpointCorruptError, match="truncated|damaged|not an"):
            _load(path, target)
    assert fingerprint(*target, ids=True) == before
    path.write_bytes(data[:-1])
    with pytest.raises(optdsl.CheckpointCorruptError, match=r"truncated: its tensors need"):
        _load(path, target)


@pytest.mark.parametrize("mask", [0xFF, 0x01])
def test_every_flipped_byte_is_detected(saved, mask):
    """Every single byte of the file, flipped by ``mask``: each load raises a corruption
    error (0x01 keeps most JSON text valid JSON, so the checksums must catch it)."""
    path, target = saved
    data = path.read_bytes()
    before = fingerprint(*target, ids=True)
    for i in range(len(data)):
        damaged = bytearray(data)
        damaged[i] ^= mask
        path.write_bytes(bytes(damaged))
        try:
            _load(path, target)
        except optdsl.CheckpointCorruptError:
            continue
        pytest.fail(f"a flip of byte {i} with {mask:#x} loaded")
    assert fingerprint(*target, ids=True) == before


def test_damage_is_named_by_where_it_is(saved):
    """Flips that keep the header valid JSON (a letter or digit to its neighbour) are
    reported by what caught them: the metadata's checksum, the safetensors structure or
    the array checksum."""
    path, target = saved
    data = path.read_bytes()
    expected = {
        "length": (optdsl.CheckpointCorruptError, "truncated or damaged|not valid JSON"),
        "header": (optdsl.CheckpointCorruptError, "damaged: |checksum mismatch in the array"),
        "metadata": (optdsl.CheckpointChecksumError, "checksum mismatch in the metadata"),
        "data": (optdsl.CheckpointChecksumError, "checksum mismatch in the array data"),
    }
    for section, where in _sections(data).items():
        error, message = expected[section]
        spots = [i for i in where if section in ("length", "data") or chr(data[i]).isalnum()]
        for i in spots[:: max(1, len(spots) // 40)]:
            damaged = bytearray(data)
            damaged[i] ^= 0x01
            path.write_bytes(bytes(damaged))
            with pytest.raises(error, match=message):
                _load(path, target)


def test_a_valid_looking_document_with_changed_numbers_fails_its_checksum(saved):
    """Change a hyper in the metadata, keeping it valid JSON of the same length: only the
    document's sha256 can tell."""
    path, target = saved
    data = path.read_bytes()
    assert b'\\"eps\\":1e-08' in data
    path.write_bytes(data.replace(b'\\"eps\\":1e-08', b'\\"eps\\":1e-07', 1))
    before = fingerprint(*target, ids=True)
    with pytest.raises(optdsl.CheckpointChecksumError, match="metadata"):
        _load(path, target)
    assert fingerprint(*target, ids=True) == before


def test_changed_array_data_fails_the_array_checksum(saved):
    """Arrays rewritten by safetensors itself (a valid file) under the original metadata:
    only the array checksum can tell."""
    import safetensors
    from safetensors.numpy import save_file

    path, target = saved
    with safetensors.safe_open(path, framework="np") as f:
        meta, arrays = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    arrays["optimizer.state.0.exp_avg"] = arrays["optimizer.state.0.exp_avg"] * 2
    save_file(arrays, path, metadata=meta)
    before = fingerprint(*target, ids=True)
    with pytest.raises(optdsl.CheckpointChecksumError, match="checksum mismatch in the array"):
        _load(path, target)
    assert fingerprint(*target, ids=True) == before


def test_a_newer_format_version_is_refused(saved):
    path, target = saved
    rewrite(path, lambda doc: doc.update(format_version=FORMAT_VERSION + 1,
                                         optdsl_version="9.0.0"))
    before = fingerprint(*target, ids=True)
    with pytest.raises(optdsl.CheckpointVersionError,
                       match=rf"format {FORMAT_VERSION + 1} \(by optdsl 9.0.0\).*upgrade"):
        _load(path, target)
    assert fingerprint(*target, ids=True) == before


def test_files_that_are_not_optdsl_checkpoints(tmp_path, saved):
    from safetensors.numpy import save_file

    _, target = saved
    before = fingerprint(*target, ids=True)
    plain = tmp_path / "model.safetensors"
    save_file({"w": np.ones(3, np.float32)}, plain)
    with pytest.raises(optdsl.CheckpointCorruptError, match="not an optdsl checkpoint"):
        _load(plain, target)
    text = tmp_path / "notes.txt"
    text.write_text("hello, this is not a checkpoint at all")
    with pytest.raises(optdsl.CheckpointCorruptError):
        _load(text, target)
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(optdsl.CheckpointCorruptError, match="truncated"):
        _load(empty, target)
    assert fingerprint(*target, ids=True) == before


@pytest.mark.parametrize("change", [
    lambda doc: doc["optimizer"]["params"][0]["state"].update(exp_avg="params.0"),
    lambda doc: doc["optimizer"]["param_groups"][0]["params"].append(0),
    lambda doc: doc["optimizer"]["params"][0].update(step="three"),
    lambda doc: doc.update(extra={"$float": "eleven"}),
    lambda doc: doc["params"].pop(),
], ids=["tensor named twice", "param listed twice", "bad step", "bad tag", "lost tensor"])
def test_a_malformed_document_with_valid_checksums_is_refused(saved, change):
    """Files optdsl did not write (checksums recomputed over a changed document)."""
    path, target = saved
    rewrite(path, change)
    before = fingerprint(*target, ids=True)
    with pytest.raises(optdsl.CheckpointCorruptError, match="malformed metadata"):
        _load(path, target)
    assert fingerprint(*target, ids=True) == before


def test_a_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        optdsl.load(tmp_path / "nope.safetensors")
