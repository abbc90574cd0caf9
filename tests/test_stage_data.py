"""benchmarks/gpu/stage_data.py: CIFAR-10 split into parts here, unpacked and checked on the GPU machine."""

import lzma
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "gpu"))
import stage_data  # noqa: E402


def _fake_cifar(folder: Path) -> dict[str, bytes]:
    folder.mkdir(parents=True)
    contents = {name: os.urandom(3000 + i) for i, name in enumerate(stage_data.FILES)}
    for name, data in contents.items():
        (folder / name).write_bytes(data)
    return contents


def test_parts_unpack_into_the_same_files_and_say_what_is_still_missing(tmp_path, capsys):
    contents = _fake_cifar(tmp_path / "src")
    parts = stage_data.split(tmp_path / "src", tmp_path / "out", parts=3, jobs=1)
    assert [p.name for p in parts] == ["cifar10-part1", "cifar10-part2", "cifar10-part3"]
    dest = tmp_path / "device" / "cifar-10-batches-py"
    assert [stage_data.unpack(p, dest) for p in parts] == [3, 3, 0]
    printed = capsys.readouterr().out
    assert "still lacks" in printed and printed.rstrip().endswith(f"{dest}: CIFAR-10 complete")
    assert {f.name: f.read_bytes() for f in dest.iterdir()} == contents


def test_a_damaged_part_is_refused_and_leaves_no_file(tmp_path):
    _fake_cifar(tmp_path / "src")
    part = stage_data.split(tmp_path / "src", tmp_path / "out", parts=1, jobs=1)[0]
    packed = part / "test_batch.xz"
    with lzma.open(packed, "wb", format=lzma.FORMAT_XZ) as f:  # a valid archive of other bytes
        f.write(b"not the test batch")
    dest = tmp_path / "device"
    with pytest.raises(SystemExit, match="test_batch.xz: checksum mismatch"):
        stage_data.unpack(part, dest)
    assert not (dest / "test_batch").exists() and not list(dest.glob("*.tmp"))


def test_the_default_source_is_where_lrtrain_finds_cifar10(tmp_path, monkeypatch):
    _fake_cifar(tmp_path / "data" / "cifar-10-batches-py")
    monkeypatch.setenv("LRTRAIN_DATA", str(tmp_path / "data"))
    assert stage_data.default_src() == (tmp_path / "data" / "cifar-10-batches-py").resolve()
    monkeypatch.setenv("LRTRAIN_DATA", str(tmp_path / "data" / "cifar-10-batches-py"))  # the folder itself
    assert stage_data.default_src() == (tmp_path / "data" / "cifar-10-batches-py").resolve()
    monkeypatch.delenv("LRTRAIN_DATA")
    work = tmp_path / "checkout"
    work.mkdir()
    monkeypatch.chdir(work)  # ../shared/data from the working directory, as in a fresh clone beside it
    _fake_cifar(tmp_path / "shared" / "data" / "cifar-10-batches-py")
    assert stage_data.default_src() == (tmp_path / "shared" / "data" / "cifar-10-batches-py").resolve()


def test_a_missing_source_folder_says_how_to_give_one(tmp_path):
    with pytest.raises(SystemExit, match=r"no CIFAR-10 folder .*nowhere: give --src, or set \$LRTRAIN_DATA"):
        stage_data.split(tmp_path / "nowhere", tmp_path / "out", parts=3, jobs=1)
