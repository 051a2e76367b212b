"""Serde: packing, chunking, checksums and every refusal of malformed messages."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cpml.wire import serde
from cpml.wire.generated.v1 import worker_pb2 as pb

P = 33554393


def _spec(rows=7, cols=5, degree=1) -> serde.WireJobSpec:
    return serde.WireJobSpec(modulus=P, degree=degree, rows=rows, cols=cols,
                             coefficients=np.arange(1, degree + 2, dtype=np.uint32), model="logistic")


def test_pack_is_little_endian_uint32():
    data = serde.pack_elements(np.array([1, 0x01020304], dtype=np.uint32))
    assert data == b"\x01\x00\x00\x00\x04\x03\x02\x01"


def test_pack_refuses_other_dtypes():
    with pytest.raises(TypeError, match="Argument 'values' must have dtype uint32, not int64"):
        serde.pack_elements(np.array([1, 2]))


@settings(max_examples=50, deadline=None)
@given(rows=st.integers(1, 9), cols=st.integers(1, 9), data=st.data())
def test_block_round_trip(rows, cols, data):
    values = np.array(data.draw(st.lists(st.integers(0, P - 1), min_size=rows * cols, max_size=rows * cols)),
                      dtype=np.uint32).reshape(rows, cols)
    back = serde.block_from_proto(serde.block_to_proto(values), (rows, cols), P, "block")
    np.testing.assert_array_equal(back, values)
    assert back.dtype == np.uint32


def test_block_refuses_values_not_below_p():
    msg = serde.block_to_proto(np.array([[0, P - 1, P]], dtype=np.uint32))
    with pytest.raises(serde.MalformedMessage, match=r"1 value\(s\) >= the modulus 33554393"):
        serde.block_from_proto(msg, (1, 3), P, "block")


def test_block_refuses_wrong_shape_and_wrong_byte_count():
    msg = serde.block_to_proto(np.zeros((2, 3), dtype=np.uint32))
    with pytest.raises(serde.MalformedMessage, match="is 2x3 but this job needs 3x2"):
        serde.block_from_proto(msg, (3, 2), P, "block")
    msg.data = msg.data[:-1]
    with pytest.raises(serde.MalformedMessage, match="has 23 bytes but shape 2x3 needs 24"):
        serde.block_from_proto(msg, (2, 3), P, "block")


def test_job_spec_round_trip_and_refusals():
    spec = _spec(degree=2)
    back = serde.job_spec_from_proto(serde.job_spec_to_proto(spec))
    assert (back.modulus, back.degree, back.rows, back.cols, back.model) == (P, 2, 7, 5, "logistic")
    np.testing.assert_array_equal(back.coefficients, spec.coefficients)
    assert back.share_bytes == 7 * 5 * 4
    with pytest.raises(serde.MalformedMessage, match="modulus 4294967311 cannot travel"):
        serde.job_spec_from_proto(pb.JobSpec(modulus=2**32 + 15, rows=1, cols=1))
    with pytest.raises(serde.MalformedMessage, match="empty share"):
        serde.job_spec_from_proto(pb.JobSpec(modulus=P, rows=0, cols=3))
    short = serde.job_spec_to_proto(spec)
    short.degree = 3
    with pytest.raises(serde.MalformedMessage, match="sigmoid coefficients is 1x3 but this job needs 1x4"):
        serde.job_spec_from_proto(short)


def test_chunks_stay_under_the_limit_and_reassemble():
    spec = _spec(rows=50, cols=13)
    share = np.random.default_rng(0).integers(0, P, size=(50, 13), dtype=np.uint32)
    chunks = list(serde.share_chunks_to_proto("job", 100, share, spec, max_chunk_bytes=200))
    assert len(chunks) == 17  # 3 rows of 13 x 4 bytes fit in 200 bytes
    assert chunks[0].HasField("spec") and not any(c.HasField("spec") for c in chunks[1:])
    assert all(len(c.block.data) <= 200 for c in chunks)
    wide_spec = _spec(rows=150, cols=13)
    parts = [serde.share_chunk_from_proto(c, wide_spec) for c in chunks]
    assert [p.row_offset for p in parts] == list(range(100, 150, 3))
    np.testing.assert_array_equal(np.vstack([p.block for p in parts]), share)


def test_one_row_per_chunk_when_a_row_exceeds_the_budget():
    assert serde.rows_per_chunk(10_000, max_chunk_bytes=100) == 1
    with pytest.raises(ValueError, match="Argument 'cols' must be positive, not 0."):
        serde.rows_per_chunk(0)


def test_chunk_checksum_mismatch_is_corrupt_data():
    spec = _spec()
    chunk = next(serde.share_chunks_to_proto("job", 0, np.ones((2, 5), dtype=np.uint32), spec))
    chunk.block.data = b"\x02" + chunk.block.data[1:]
    with pytest.raises(serde.CorruptData, match="fails its CRC-32 check"):
        serde.share_chunk_from_proto(chunk, spec)


def test_chunk_outside_the_share_or_wrong_width_is_refused():
    spec = _spec(rows=4, cols=5)
    past_end = next(serde.share_chunks_to_proto("job", 3, np.ones((2, 5), dtype=np.uint32)))
    with pytest.raises(serde.MalformedMessage, match=r"covers rows \[3, 5\) but job 'job' declared 4 rows"):
        serde.share_chunk_from_proto(past_end, spec)
    narrow = next(serde.share_chunks_to_proto("job", 0, np.ones((2, 4), dtype=np.uint32)))
    with pytest.raises(serde.MalformedMessage, match="has 4 columns but job 'job' declared 5"):
        serde.share_chunk_from_proto(narrow, spec)


def test_round_messages_round_trip():
    spec = _spec(cols=5, degree=2)
    weights = np.arange(10, dtype=np.uint32).reshape(5, 2)
    req = serde.round_request_to_proto("job", 3, weights)
    np.testing.assert_array_equal(serde.round_request_from_proto(req, spec), weights)
    res = serde.round_result_to_proto("job", 3, np.arange(5, dtype=np.uint32), 0.25)
    np.testing.assert_array_equal(serde.round_result_from_proto(res, P, 5), np.arange(5))
    assert (res.job_id, res.round, res.compute_seconds) == ("job", 3, 0.25)
    with pytest.raises(serde.MalformedMessage, match="round 3 weights is 5x2 but this job needs 5x1"):
        serde.round_request_from_proto(req, _spec(cols=5, degree=1))


def test_status_round_trip():
    status = serde.WorkerStatus(version="0.1.0", max_modulus=2**31, share_bytes_cap=10, share_bytes_used=4,
                                jobs=1, max_message_bytes=4 << 20)
    assert serde.status_from_proto(serde.status_to_proto(status)) == status


@pytest.mark.parametrize("offset", [0, 100])
@pytest.mark.parametrize("with_spec", [False, True])
def test_wire_chunks_are_byte_identical_to_protobuf_serialization(offset, with_spec):
    spec = _spec(rows=150, cols=13)
    share = np.random.default_rng(offset).integers(0, P, size=(50, 13), dtype=np.uint32)
    share[0, 0] = 0
    chosen = spec if with_spec else None
    expected = [m.SerializeToString() for m in serde.share_chunks_to_proto("job", offset, share, chosen, 200)]
    wire = list(serde.share_chunks_to_wire("job", offset, share, chosen, 200))
    assert [w for w, _ in wire] == expected
    assert [n for _, n in wire] == [len(pb.ShareChunk.FromString(e).block.data) for e in expected]
    with pytest.raises(TypeError, match="Argument 'block' must have dtype uint32, not int64."):
        next(serde.share_chunks_to_wire("job", 0, share.astype(np.int64)))


def test_the_raw_upload_path_names_the_generated_method():
    from cpml.master.cluster import UPLOAD_METHOD

    method = pb.DESCRIPTOR.services_by_name["Worker"].methods_by_name["UploadShare"]
    assert UPLOAD_METHOD == "/" + method.full_name.replace(".UploadShare", "/UploadShare")
