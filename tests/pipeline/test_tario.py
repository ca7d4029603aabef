from __future__ import annotations

import io
import tarfile

from pipeline.tario import END_OF_ARCHIVE, tar_member


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
