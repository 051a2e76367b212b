"""The share store alone: cap accounting over uploads in flight, commit, removal and idle expiry."""

from __future__ import annotations

import numpy as np
import pytest
from helpers_cluster import small_job

from cpml.wire import serde
from cpml.worker.store import JobExists, ShareStore, ShareStoreFull, UnknownJob


def _part(job, start, stop):
    return serde.ShareBlock(job.job_id, start, job.share[start:stop], None)


def test_uploads_in_flight_count_against_the_cap():
    store = ShareStore(cap_bytes=200)
    a, b = small_job("a"), small_job("b")  # 96 bytes each
    upload_a = store.begin_upload("a", a.spec)
    store.begin_upload("b", b.spec)
    assert store.used_bytes == 192
    with pytest.raises(ShareStoreFull, match="has 8 of its 200-byte cap free"):
        store.begin_upload("c", small_job("c").spec)
    with pytest.raises(JobExists):
        store.begin_upload("a", a.spec)
    upload_a.add(_part(a, 0, 6))
    job = upload_a.commit()
    np.testing.assert_array_equal(store.get("a").share, a.share)
    assert job.share is store.get("a").share and len(store) == 1


def test_rows_must_all_arrive_exactly_once():
    store = ShareStore(cap_bytes=1000)
    job = small_job()
    upload = store.begin_upload(job.job_id, job.spec)
    upload.add(_part(job, 0, 3))
    with pytest.raises(serde.MalformedMessage, match="overlaps rows already received"):
        upload.add(_part(job, 2, 4))
    with pytest.raises(serde.CorruptData, match="ended with 3 of 6 rows missing"):
        upload.commit()
    upload.abort()
    assert store.used_bytes == 0


def test_remove_and_expire_free_the_bytes():
    store = ShareStore(cap_bytes=1000)
    for name in ("old", "new"):
        job = small_job(name)
        upload = store.begin_upload(name, job.spec)
        upload.add(_part(job, 0, 6))
        upload.commit()
    store.get("old").last_used -= 100
    assert store.expire(idle_seconds=50) == ["old"]
    with pytest.raises(UnknownJob, match="'old' is not stored on this worker"):
        store.get("old")
    assert store.remove("new") == 96 and store.remove("new") == 0
    assert store.used_bytes == 0 and len(store) == 0
