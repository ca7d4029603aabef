from __future__ import annotations

import io
import tarfile

import pytest

from lakelabel.pipeline.tario import END_OF_ARCHIVE, tar_member


def test_members_read_back_with_tarfile():
    blob = (
        tar_member("a" * 32 + ".jpg", b"x" * 1000, 1_700_000_000)
        + tar_member("b.json", b"{}")
        + END_OF_ARCHIVE
    )
    with tarfile.open(fileobj=io.BytesIO(blob)) as tf:
        members = tf.getmembers()
        assert [m.name for m in members] == ["a" * 32 + ".jpg", "b.json"]
        assert members[0].size == 1000 and members[0].mtime == 1_700_000_000 and members[0].isfile()
        assert tf.extractfile(members[0]).read() == b"x" * 1000
    assert len(blob) % 512 == 0


def test_sample_encoder_matches_tar_member_and_reads_back():
    from lakelabel.pipeline.tario import SampleEncoder

    encoder = SampleEncoder(1_700_000_000)
    for key, jpeg, meta in (
        ("f" * 32, b"\xff" * 1000, b'{"a":1}'),
        ("k", b"", b""),
        ("x" * 95, b"j" * 512, b"m"),
    ):
        blob = encoder.encode(key, jpeg, meta)
        assert blob == tar_member(key + ".jpg", jpeg, 1_700_000_000) + tar_member(
            key + ".json", meta, 1_700_000_000
        )
        with tarfile.open(fileobj=io.BytesIO(blob + END_OF_ARCHIVE)) as tf:
            assert [m.name for m in tf.getmembers()] == [key + ".jpg", key + ".json"]
            assert tf.extractfile(key + ".jpg").read() == jpeg
            assert tf.extractfile(key + ".json").read() == meta
    with pytest.raises(ValueError, match="too long"):
        encoder.encode("y" * 96, b"", b"")
