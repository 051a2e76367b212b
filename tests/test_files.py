"""cpml.files: atomic writes (also from several writers at once) and capped reads."""

from __future__ import annotations

import os
import threading

import pytest

from cpml.files import read_capped, write_atomically


def test_writers_of_the_same_path_at_once_never_take_each_others_temporary_file(tmp_path):
    # two cpml-party processes given the same --out once failed here: one renamed the other's shared ".tmp" away
    path, errors = tmp_path / "model.json", []
    texts = [f"writer {i}\n" * 20_000 for i in range(8)]

    def write(text: str) -> None:
        try:
            for _ in range(20):
                write_atomically(path, text)
        except OSError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(text,)) for text in texts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and path.read_text() in texts  # whole, from one writer
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json"]  # no temporary file left behind


def test_a_private_file_is_readable_by_its_owner_only(tmp_path):
    path = write_atomically(tmp_path / "tokens", "a:secret\n", private=True)
    assert path.stat().st_mode & 0o777 == 0o600 and path.read_text() == "a:secret\n"


def test_reads_are_capped_and_refused_with_the_flag_named(tmp_path):
    small, large = tmp_path / "small.json", tmp_path / "large.json"
    small.write_text("{}")
    large.write_bytes(b"x" * 101)
    assert read_capped(small, 100, "feature_bounds", "JSON file") == "{}"
    with pytest.raises(ValueError, match=r"Argument 'feature_bounds' must be at most 100 bytes"):
        read_capped(large, 100, "feature_bounds", "JSON file")
    os.chmod(small, 0)
    if os.geteuid() != 0:  # root reads anything
        with pytest.raises(ValueError, match=r"Argument 'feature_bounds' must be a readable JSON file"):
            read_capped(small, 100, "feature_bounds", "JSON file")
