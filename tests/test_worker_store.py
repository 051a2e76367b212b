"""The share store alone: cap accounting over uploads in flight, commit, removal and idle expiry."""

from __future__ import annotations

import numpy as np
import pytest
from helpers_cluster import small_job

from cpml.field import basis_for
from cpml.wire import serde
from cpml.worker.store import JobExists, ShareStore, ShareStoreFull, UnknownJob


def _part(job, start, stop, residue=0):
    return serde.ShareBlock(job.job_id, residue, start, job.share[residue, start:stop])


def _stored(job):
    """The job's share as a worker stores it: centred int32, the form the fused step computes on."""
    return np.stack([f.centred(x, np.int32) for f, x in zip(basis_for(job.spec.moduli).fields, job.share)])


def _add_all(upload, job):
    for residue in range(job.spec.residues):
        upload.add(_part(job, 0, job.spec.rows, residue))


def test_uploads_in_flight_count_against_the_cap():
    store = ShareStore(cap_bytes=400)
    a, b = small_job("a"), small_job("b")  # 6 x 4 elements x 4 bytes x 2 residues = 192 bytes each
    upload_a = store.begin_upload("a", a.spec)
    store.begin_upload("b", b.spec)
    assert store.used_bytes == 384
    with pytest.raises(ShareStoreFull, match="has 16 of its 400-byte cap free"):
        store.begin_upload("c", small_job("c").spec)
    with pytest.raises(JobExists):
        store.begin_upload("a", a.spec)
    _add_all(upload_a, a)
    job = upload_a.commit()
    np.testing.assert_array_equal(store.get("a").share, _stored(a))
    assert job.share is store.get("a").share and len(store) == 1


def test_rows_must_all_arrive_exactly_once():
    store = ShareStore(cap_bytes=1000)
    job = small_job()
    upload = store.begin_upload(job.job_id, job.spec)
    upload.add(_part(job, 0, 3))
    with pytest.raises(serde.MalformedMessage, match="chunk at row 2 of residue 0 overlaps rows already received"):
        upload.add(_part(job, 2, 4))
    upload.add(_part(job, 2, 4, residue=1))  # the same rows of another residue are not an overlap
    with pytest.raises(
        serde.CorruptData,
        match=r"ended with 7 of 12 rows missing \(truncated stream: residue 0 "
        r"lacks 3 of its 6 rows, residue 1 lacks 4 of its 6 rows\)",
    ):
        upload.commit()
    upload.abort()
    assert store.used_bytes == 0


def test_a_share_with_one_residue_missing_is_not_committed():
    store = ShareStore(cap_bytes=1000)
    job = small_job()
    upload = store.begin_upload(job.job_id, job.spec)
    upload.add(_part(job, 0, 6, residue=0))
    with pytest.raises(
        serde.CorruptData,
        match=r"6 of 12 rows missing \(truncated stream: residue 1 lacks 6 of "
        r"its 6 rows\)",
    ):
        upload.commit()
    upload.add(_part(job, 0, 6, residue=1))
    committed = upload.commit()
    np.testing.assert_array_equal(committed.share, _stored(job))
    assert committed.share.shape == (2, 6, 4)


def test_remove_and_expire_free_the_bytes():
    store = ShareStore(cap_bytes=1000)
    for name in ("old", "new"):
        job = small_job(name)
        upload = store.begin_upload(name, job.spec)
        _add_all(upload, job)
        upload.commit()
    store.get("old").last_used -= 100
    assert store.expire(idle_seconds=50) == ["old"]
    with pytest.raises(UnknownJob, match="'old' is not stored on this worker"):
        store.get("old")
    assert store.remove("new") == 192 and store.remove("new") == 0
    assert store.used_bytes == 0 and len(store) == 0
