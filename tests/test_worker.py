"""The worker daemon in-process on 127.0.0.1:0: good jobs, every refusal (code + still serving), teardown."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers_cluster import DEADLINE, P, compute, running_worker, small_job, stub_for, upload

from cpml.field import field_for
from cpml.protocol import worker_compute
from cpml.wire import serde
from cpml.wire.generated.v1 import worker_pb2 as pb


def _expected(job, round_number):
    return worker_compute(field_for(job.spec.modulus), job.share, job.weights(round_number), job.spec.coefficients)


async def _assert_good_job_works(stub, job_id="good-job"):
    job = small_job(job_id, seed=7)
    reply = await upload(stub, job.chunks())
    assert reply.stored_bytes == job.share.nbytes
    results = await compute(stub, [serde.round_request_to_proto(job_id, 0, job.weights(0))])
    assert [r.round for r in results] == [0]
    np.testing.assert_array_equal(serde.round_result_from_proto(results[0], P, job.spec.cols), _expected(job, 0))


async def test_upload_then_rounds_match_the_protocol_function():
    job = small_job(rows=40, cols=5, degree=2)
    async with running_worker() as worker, stub_for(worker.address) as stub:
        await upload(stub, job.chunks(max_chunk_bytes=64))  # 3 rows per chunk: many chunks
        requests = [serde.round_request_to_proto(job.job_id, k, job.weights(k)) for k in range(3)]

        async def paced():
            for request in requests:  # one at a time, so no round is skipped as stale
                yield request
                await asyncio.sleep(0.2)

        results = [r async for r in stub.Compute(paced(), timeout=DEADLINE)]
        assert [r.round for r in results] == [0, 1, 2]
        for r in results:
            np.testing.assert_array_equal(serde.round_result_from_proto(r, P, 5), _expected(job, r.round))
            assert r.job_id == job.job_id and r.compute_seconds >= 0


def _chunks_with(mutate, job=None):
    job = job or small_job("bad-job")
    chunks = job.chunks()
    mutate(chunks)
    return chunks


def _corrupt_first_byte(chunks):
    chunks[1].block.data = bytes([chunks[1].block.data[0] ^ 1]) + chunks[1].block.data[1:]


def _value_not_below_p(chunks):
    values = np.frombuffer(chunks[0].block.data, dtype="<u4").copy()
    values[0] = P
    chunks[0].block.data = values.tobytes()
    chunks[0].crc32 = serde.checksum(chunks[0].block.data)


def _wrong_byte_count(chunks):
    chunks[0].block.data = chunks[0].block.data[:-4]
    chunks[0].crc32 = serde.checksum(chunks[0].block.data)


def _composite_modulus(chunks):
    chunks[0].spec.modulus = 33554395  # the paper's 2^25-37: divisible by 5 and 7


def _no_spec(chunks):
    chunks[0].ClearField("spec")


def _mixed_jobs(chunks):
    chunks[1].job_id = "another-job"


def _overlapping_rows(chunks):
    chunks[1].row_offset = 0


UPLOAD_REFUSALS = [
    pytest.param(lambda c: c.pop(), grpc.StatusCode.DATA_LOSS, "rows missing (truncated stream)", id="truncated"),
    pytest.param(_corrupt_first_byte, grpc.StatusCode.DATA_LOSS, "fails its CRC-32 check", id="checksum"),
    pytest.param(_value_not_below_p, grpc.StatusCode.INVALID_ARGUMENT, ">= the modulus 33554393", id="value>=p"),
    pytest.param(_wrong_byte_count, grpc.StatusCode.INVALID_ARGUMENT, "bytes but shape", id="wrong-size"),
    pytest.param(_composite_modulus, grpc.StatusCode.INVALID_ARGUMENT,
                 "modulus 33554395 is not supported: Argument 'p' must be prime", id="modulus"),
    pytest.param(_no_spec, grpc.StatusCode.INVALID_ARGUMENT, "carries no job spec", id="no-spec"),
    pytest.param(_mixed_jobs, grpc.StatusCode.INVALID_ARGUMENT, "upload each job's share on its own stream",
                 id="mixed-jobs"),
    pytest.param(_overlapping_rows, grpc.StatusCode.INVALID_ARGUMENT, "overlaps rows already received",
                 id="overlap"),
    pytest.param(lambda c: c.clear(), grpc.StatusCode.INVALID_ARGUMENT, "stream was empty", id="empty"),
]


@pytest.mark.parametrize(("mutate", "code", "message"), UPLOAD_REFUSALS)
async def test_bad_upload_is_refused_and_the_worker_keeps_serving(mutate, code, message):
    async with running_worker() as worker, stub_for(worker.address) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await upload(stub, _chunks_with(mutate))
        assert err.value.code() == code
        assert message in err.value.details()
        assert worker.store.used_bytes == 0  # the reservation was given back
        await _assert_good_job_works(stub)


async def test_share_over_the_byte_cap_is_resource_exhausted():
    big = small_job("big", rows=100, cols=4)
    async with running_worker(share_bytes_cap=1000) as worker, stub_for(worker.address) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await upload(stub, big.chunks())
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "needs 1600 bytes" in err.value.details() and "--share-bytes-cap" in err.value.details()
        await _assert_good_job_works(stub)  # 96 bytes fit


async def test_duplicate_job_id_is_already_exists():
    async with running_worker() as worker, stub_for(worker.address) as stub:
        await _assert_good_job_works(stub, "twice")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await upload(stub, small_job("twice").chunks())
        assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
        await _assert_good_job_works(stub)


def _rounds(job, *numbers, weights=None):
    return [serde.round_request_to_proto(job.job_id, n, job.weights(n) if weights is None else weights)
            for n in numbers]


COMPUTE_REFUSALS = [
    pytest.param(lambda job: _rounds(small_job("never-uploaded"), 0), grpc.StatusCode.NOT_FOUND,
                 "is not stored on this worker", id="unknown-job"),
    pytest.param(lambda job: _rounds(job, 2, 2), grpc.StatusCode.FAILED_PRECONDITION,
                 "round 2 of job 'bad-job' arrived after round 2", id="round-repeated"),
    pytest.param(lambda job: _rounds(job, 5, 3), grpc.StatusCode.FAILED_PRECONDITION,
                 "rounds on a stream must strictly increase", id="round-backwards"),
    pytest.param(lambda job: _rounds(job, 0, weights=np.zeros((4, 2), dtype=np.uint32)),
                 grpc.StatusCode.INVALID_ARGUMENT, "round 0 weights is 4x2 but this job needs 4x1",
                 id="weights-shape"),
    pytest.param(lambda job: _rounds(job, 0, weights=np.full((4, 1), P + 1, dtype=np.uint32)),
                 grpc.StatusCode.INVALID_ARGUMENT, "4 value(s) >= the modulus", id="weights>=p"),
    pytest.param(lambda job: _rounds(job, 0) + _rounds(small_job("other"), 1), grpc.StatusCode.INVALID_ARGUMENT,
                 "open one stream per job", id="two-jobs-one-stream"),
]


@pytest.mark.parametrize(("requests", "code", "message"), COMPUTE_REFUSALS)
async def test_bad_compute_stream_is_refused_and_the_worker_keeps_serving(requests, code, message):
    job = small_job("bad-job")
    async with running_worker() as worker, stub_for(worker.address) as stub:
        await upload(stub, job.chunks())
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await compute(stub, requests(job))
        assert err.value.code() == code
        assert message in err.value.details()
        await _assert_good_job_works(stub)
        # the refused stream did not harm the stored job either
        results = await compute(stub, _rounds(job, 9))
        np.testing.assert_array_equal(serde.round_result_from_proto(results[0], P, 4), _expected(job, 9))


async def test_a_straggler_skips_rounds_the_master_moved_past():
    job = small_job()
    async with running_worker(fault_reply_delay=0.3) as worker, stub_for(worker.address) as stub:
        await upload(stub, job.chunks())
        results = await compute(stub, _rounds(job, 0, 1, 2, 3))
    rounds = [r.round for r in results]
    assert rounds[0] == 0 and rounds[-1] == 3 and len(rounds) < 4  # 1 and/or 2 were superseded
    assert rounds == sorted(rounds)


async def test_fail_after_rounds_fault_aborts_with_unavailable():
    job = small_job()
    async with running_worker(fault_fail_after_rounds=1) as worker, stub_for(worker.address) as stub:
        await upload(stub, job.chunks())
        call = stub.Compute(iter(_rounds(job, 0)), timeout=DEADLINE)
        replies = []
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for reply in call:
                replies.append(reply.round)
        assert replies == [0]
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_end_job_frees_its_bytes_and_status_reports_load():
    job = small_job("ending")
    async with running_worker(share_bytes_cap=10_000) as worker, stub_for(worker.address) as stub:
        await upload(stub, job.chunks())
        status = serde.status_from_proto(await stub.Status(pb.StatusRequest(), timeout=DEADLINE))
        assert (status.jobs, status.share_bytes_used, status.share_bytes_cap) == (1, 96, 10_000)
        reply = await stub.EndJob(pb.EndJobRequest(job_id="ending"), timeout=DEADLINE)
        assert reply.existed and reply.freed_bytes == 96
        assert not (await stub.EndJob(pb.EndJobRequest(job_id="ending"), timeout=DEADLINE)).existed
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await compute(stub, _rounds(job, 0))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert worker.store.used_bytes == 0


async def test_health_service_reports_serving_then_not_serving():
    async with running_worker() as worker, grpc.aio.insecure_channel(worker.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "cpml.v1.Worker"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=DEADLINE)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        await worker.health.enter_graceful_shutdown()
        reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=DEADLINE)
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING


async def test_nothing_logged_carries_share_or_weight_values():
    job = small_job(rows=30, cols=4)
    with structlog.testing.capture_logs() as logs:
        async with running_worker() as worker, stub_for(worker.address) as stub:
            await upload(stub, job.chunks())
            await compute(stub, _rounds(job, 0, 1))
            with pytest.raises(grpc.aio.AioRpcError):
                await upload(stub, _chunks_with(_value_not_below_p))
    assert any(e["event"] == "share stored" for e in logs)
    secrets = {int(v) for v in job.share.ravel()} | {int(v) for v in job.weights(0).ravel()}
    for event in logs:
        for key, value in event.items():
            assert not isinstance(value, (np.ndarray, bytes, list, tuple)), (key, event)
            if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
                assert int(value) not in secrets or int(value) < 1000, (key, event)


async def test_an_upload_cancelled_mid_stream_frees_its_reservation():
    job = small_job("cancelled", rows=40)
    chunks = job.chunks()
    hang = asyncio.Event()

    async def first_chunk_then_hang():
        yield chunks[0]
        await hang.wait()  # the master dies here: the stream never finishes

    async with running_worker() as worker, stub_for(worker.address) as stub:
        call = stub.UploadShare(first_chunk_then_hang(), timeout=DEADLINE)
        for _ in range(100):
            if worker.store.used_bytes:
                break
            await asyncio.sleep(0.01)
        assert worker.store.used_bytes == job.share.nbytes  # reserved while uploading
        call.cancel()
        for _ in range(100):
            if not worker.store.used_bytes:
                break
            await asyncio.sleep(0.01)
        assert worker.store.used_bytes == 0
        await _assert_good_job_works(stub)
        await upload(stub, job.chunks())  # the same job id can be uploaded again


async def test_a_message_over_the_size_limit_is_resource_exhausted():
    job = small_job("huge-chunks", rows=200, cols=8)  # one 6400-byte chunk
    async with running_worker(max_message_bytes=4096) as worker, stub_for(worker.address) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await upload(stub, job.chunks(max_chunk_bytes=1 << 20))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert worker.store.used_bytes == 0
        await _assert_good_job_works(stub)
