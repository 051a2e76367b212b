"""Serde: packing, chunking, checksums and every refusal of malformed messages."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cpml.field import residue_primes
from cpml.wire import serde
from cpml.wire.generated.v1 import worker_pb2 as pb

P = 33554393
MODULI = residue_primes(P, 2)  # (P, 33554383): residue 1's modulus is below residue 0's
Q = MODULI[1]


def _spec(rows=7, cols=5, degree=1, moduli=MODULI) -> serde.WireJobSpec:
    coefficients = np.arange(1, len(moduli) * (degree + 1) + 1, dtype=np.uint32).reshape(len(moduli), degree + 1)
    return serde.WireJobSpec(
        moduli=tuple(moduli), degree=degree, rows=rows, cols=cols, coefficients=coefficients, model="logistic"
    )


def _spec_proto(**fields) -> pb.JobSpec:
    """A valid two-residue JobSpec message with some fields replaced (as a hostile master could)."""
    msg = serde.job_spec_to_proto(_spec(degree=2))
    for name, value in fields.items():
        if name == "moduli":
            del msg.moduli[:]
            msg.moduli.extend(value)
        elif name == "coefficients":
            msg.coefficients.CopyFrom(serde.block_to_proto(np.asarray(value, dtype=np.uint32)))
        else:
            setattr(msg, name, value)
    return msg


def test_pack_is_little_endian_uint32():
    data = serde.pack_elements(np.array([1, 0x01020304], dtype=np.uint32))
    assert data == b"\x01\x00\x00\x00\x04\x03\x02\x01"


def test_pack_refuses_other_dtypes():
    with pytest.raises(TypeError, match="Argument 'values' must have dtype uint32, not int64"):
        serde.pack_elements(np.array([1, 2]))


@settings(max_examples=50, deadline=None)
@given(rows=st.integers(1, 9), cols=st.integers(1, 9), data=st.data())
def test_block_round_trip(rows, cols, data):
    values = np.array(
        data.draw(st.lists(st.integers(0, P - 1), min_size=rows * cols, max_size=rows * cols)), dtype=np.uint32
    ).reshape(rows, cols)
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
    msg = serde.job_spec_to_proto(spec)
    assert list(msg.moduli) == list(MODULI) and msg.modulus == 0  # the cpml 0.1 field is never written
    back = serde.job_spec_from_proto(msg)
    assert (back.moduli, back.degree, back.rows, back.cols, back.model) == (MODULI, 2, 7, 5, "logistic")
    np.testing.assert_array_equal(back.coefficients, spec.coefficients)
    assert back.coefficients.shape == (2, 3) and back.residues == 2
    assert back.share_bytes == 2 * 7 * 5 * 4
    with pytest.raises(serde.MalformedMessage, match="empty share"):
        serde.job_spec_from_proto(_spec_proto(rows=0))
    with pytest.raises(serde.MalformedMessage, match="sigmoid coefficients are 2x3 but this job needs 2x4"):
        serde.job_spec_from_proto(_spec_proto(degree=3))


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"modulus": P, "moduli": []}, "names the single modulus 33554393 (the cpml 0.1 format)"),
        ({"modulus": P}, "needs the list `moduli`: upgrade the master"),
        ({"moduli": []}, "declares 0 residue moduli; send 1 to 8"),
        ({"moduli": residue_primes(P, 8) + (33554317,)}, "declares 9 residue moduli; send 1 to 8"),
        ({"moduli": [P, P]}, "repeats a residue modulus (33554393, 33554393); the moduli must be distinct primes"),
        ({"moduli": [P, 2**32 + 15]}, "modulus 4294967311 cannot travel as uint32 field elements"),
        ({"moduli": [P, 2]}, "modulus 2 cannot travel"),
        ({"coefficients": [[1, 2, 3]]}, "sigmoid coefficients are 1x3 but this job needs 2x3 (one row per residue"),
        ({"coefficients": [[1, 2], [3, 4]]}, "sigmoid coefficients are 2x2 but this job needs 2x3"),
        ({"coefficients": [[1, 2, 3, 4, 5, 6]]}, "sigmoid coefficients are 1x6 but this job needs 2x3"),
        ({"coefficients": [[0, 1, Q - 1], [0, 1, Q]]}, f"1 value(s) >= the modulus {Q} of residue 1"),
    ],
)
def test_job_spec_refuses_what_the_residue_contract_forbids(fields, says):
    with pytest.raises(serde.MalformedMessage) as err:
        serde.job_spec_from_proto(_spec_proto(**fields))
    assert says in str(err.value)


def test_coefficients_below_residue_0s_modulus_but_not_residue_1s_are_caught_per_residue():
    fine = serde.job_spec_from_proto(_spec_proto(coefficients=[[Q, Q, P - 1], [0, 1, Q - 1]]))
    assert fine.coefficients.tolist() == [[Q, Q, P - 1], [0, 1, Q - 1]]
    with pytest.raises(serde.MalformedMessage, match=f"3 value\\(s\\) >= the modulus {Q} of residue 1"):
        serde.job_spec_from_proto(_spec_proto(coefficients=[[0, 0, 0], [Q, Q + 1, P - 1]]))


@pytest.mark.parametrize("residue", [0, 1])
def test_chunks_stay_under_the_limit_and_reassemble(residue):
    spec = _spec(rows=50, cols=13)
    share = np.random.default_rng(0).integers(0, MODULI[residue], size=(50, 13), dtype=np.uint32)
    chunks = list(serde.share_chunks_to_proto("job", 100, share, spec, max_chunk_bytes=200, residue=residue))
    assert len(chunks) == 17  # 3 rows of 13 x 4 bytes fit in 200 bytes
    assert chunks[0].HasField("spec") and not any(c.HasField("spec") for c in chunks[1:])
    assert all(len(c.block.data) <= 200 for c in chunks) and {c.residue for c in chunks} == {residue}
    wide_spec = _spec(rows=150, cols=13)
    parts = [serde.share_chunk_from_proto(c, wide_spec) for c in chunks]
    assert [p.row_offset for p in parts] == list(range(100, 150, 3)) and {p.residue for p in parts} == {residue}
    np.testing.assert_array_equal(np.vstack([p.block for p in parts]), share)


@pytest.mark.parametrize("residue", [2, 7, 2**32 - 1])
def test_a_chunk_naming_a_residue_the_spec_lacks_is_refused(residue):
    chunk = next(serde.share_chunks_to_proto("job", 0, np.ones((2, 5), dtype=np.uint32), residue=residue))
    with pytest.raises(
        serde.MalformedMessage,
        match=f"names residue {residue} but job 'job' declared 2 moduli "
        r"\(residues 0..1\)",
    ):
        serde.share_chunk_from_proto(chunk, _spec())


def test_chunk_elements_are_checked_against_their_own_residues_modulus():
    spec = _spec(rows=2, cols=5)
    block = np.full((2, 5), Q, dtype=np.uint32)  # below P (residue 0), not below Q (residue 1)
    assert serde.share_chunk_from_proto(next(serde.share_chunks_to_proto("job", 0, block)), spec).residue == 0
    in_residue_1 = next(serde.share_chunks_to_proto("job", 0, block, residue=1))
    with pytest.raises(
        serde.MalformedMessage, match=f"chunk at row 0 of residue 1 holds 10 value\\(s\\) >= the modulus {Q}"
    ):
        serde.share_chunk_from_proto(in_residue_1, spec)


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
    weights = np.arange(20, dtype=np.uint32).reshape(2, 5, 2)
    req = serde.round_request_to_proto("job", 3, weights)
    assert (req.weights.rows, req.weights.cols) == (10, 2)  # residue 0's 5x2 block, then residue 1's
    np.testing.assert_array_equal(serde.round_request_from_proto(req, spec), weights)
    result = np.arange(10, dtype=np.uint32).reshape(2, 5)
    res = serde.round_result_to_proto("job", 3, result, 0.25)
    assert (res.result.rows, res.result.cols) == (2, 5)
    np.testing.assert_array_equal(serde.round_result_from_proto(res, MODULI, 5), result)
    assert (res.job_id, res.round, res.compute_seconds) == ("job", 3, 0.25)
    with pytest.raises(serde.MalformedMessage, match="round 3 weights are 10x2 but this job needs 10x1"):
        serde.round_request_from_proto(req, _spec(cols=5, degree=1))
    with pytest.raises(serde.MalformedMessage, match="round 3 weights are 10x2 but this job needs 15x2"):
        serde.round_request_from_proto(req, _spec(cols=5, degree=2, moduli=residue_primes(P, 3)))
    with pytest.raises(serde.MalformedMessage, match="round 3 result is 2x5 but this job needs 1x5"):
        serde.round_result_from_proto(res, (P,), 5)


def test_weights_of_the_single_field_format_are_refused():
    old = pb.RoundRequest(job_id="job", round=0, weights=serde.block_to_proto(np.zeros((5, 1), dtype=np.uint32)))
    with pytest.raises(serde.MalformedMessage, match=r"are 5x1 but this job needs 10x1 \(residues x d rows"):
        serde.round_request_from_proto(old, _spec(cols=5))


def test_weights_and_results_are_checked_against_each_residues_modulus():
    spec = _spec(cols=5, degree=1)
    weights = np.zeros((2, 5, 1), dtype=np.uint32)
    weights[0] = Q  # fine in residue 0
    np.testing.assert_array_equal(
        serde.round_request_from_proto(serde.round_request_to_proto("job", 1, weights), spec), weights
    )
    weights[1, 2] = Q
    with pytest.raises(
        serde.MalformedMessage, match=f"round 1 weights holds 1 value\\(s\\) >= the modulus {Q} of residue 1"
    ):
        serde.round_request_from_proto(serde.round_request_to_proto("job", 1, weights), spec)
    result = np.zeros((2, 5), dtype=np.uint32)
    result[1, :2] = [Q, P - 1]
    with pytest.raises(
        serde.MalformedMessage, match=f"round 4 result holds 2 value\\(s\\) >= the modulus {Q} of residue 1"
    ):
        serde.round_result_from_proto(serde.round_result_to_proto("job", 4, result, 0.0), MODULI, 5)
    result[1] = 0
    result[0, 0] = 2**32 - 1
    with pytest.raises(serde.MalformedMessage, match=f"1 value\\(s\\) >= the modulus {P}"):
        serde.round_result_from_proto(serde.round_result_to_proto("job", 4, result, 0.0), MODULI, 5)


def test_status_round_trip():
    status = serde.WorkerStatus(
        version="0.1.0", max_modulus=2**31, share_bytes_cap=10, share_bytes_used=4, jobs=1, max_message_bytes=4 << 20
    )
    assert serde.status_from_proto(serde.status_to_proto(status)) == status


@pytest.mark.parametrize("residue", [0, 1, 7, 300, 2**32 - 1])  # 300 and 2^32-1: multi-byte varints
@pytest.mark.parametrize("offset", [0, 100])
@pytest.mark.parametrize("with_spec", [False, True])
def test_wire_chunks_are_byte_identical_to_protobuf_serialization(offset, with_spec, residue):
    spec = _spec(rows=150, cols=13, moduli=residue_primes(P, 3))
    share = np.random.default_rng(offset).integers(0, P, size=(50, 13), dtype=np.uint32)
    share[0, 0] = 0
    chosen = spec if with_spec else None
    expected = [
        m.SerializeToString() for m in serde.share_chunks_to_proto("job", offset, share, chosen, 200, residue=residue)
    ]
    wire = list(serde.share_chunks_to_wire("job", offset, share, chosen, 200, residue=residue))
    assert [w for w, _ in wire] == expected
    assert [n for _, n in wire] == [len(pb.ShareChunk.FromString(e).block.data) for e in expected]
    assert {pb.ShareChunk.FromString(w).residue for w, _ in wire} == {residue}
    with pytest.raises(TypeError, match="Argument 'block' must have dtype uint32, not int64."):
        next(serde.share_chunks_to_wire("job", 0, share.astype(np.int64)))


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 12),
    cols=st.integers(1, 6),
    offset=st.integers(0, 2**32 - 13),
    residue=st.integers(0, 2**32 - 1),
    budget=st.integers(1, 300),
    with_spec=st.booleans(),
    job_id=st.text(min_size=0, max_size=40),
    data=st.data(),
)
def test_wire_chunks_match_protobuf_for_any_shape_offset_and_residue(
    rows, cols, offset, residue, budget, with_spec, job_id, data
):
    share = np.array(
        data.draw(st.lists(st.integers(0, 2**32 - 1), min_size=rows * cols, max_size=rows * cols)), dtype=np.uint32
    ).reshape(rows, cols)
    spec = _spec(rows=offset + rows, cols=cols) if with_spec else None
    expected = [
        m.SerializeToString() for m in serde.share_chunks_to_proto(job_id, offset, share, spec, budget, residue=residue)
    ]
    assert [w for w, _ in serde.share_chunks_to_wire(job_id, offset, share, spec, budget, residue=residue)] == expected


def test_the_raw_upload_path_names_the_generated_method():
    from cpml.wire.names import WORKER_SERVICE, method_path

    method = pb.DESCRIPTOR.services_by_name["Worker"].methods_by_name["UploadShare"]
    assert method_path(WORKER_SERVICE, "UploadShare") == "/" + method.full_name.replace(".UploadShare", "/UploadShare")
