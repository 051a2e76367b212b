"""The worker daemon in-process on 127.0.0.1:0: good jobs, stragglers, faults, teardown, health, logging.

Every refusal of a malformed or hostile message is in test_hostile_messages.py."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers_cluster import (
    DEADLINE,
    MODULI,
    P,
    compute,
    running_worker,
    small_job,
    stub_for,
    upload,
)

from cpml.field import residue_primes
from cpml.wire import serde
from cpml.wire.generated.v1 import worker_pb2 as pb


def _result(reply, job):
    return serde.round_result_from_proto(reply, job.moduli, job.spec.cols)


async def _assert_good_job_works(stub, job_id="good-job"):
    job = small_job(job_id, seed=7)
    reply = await upload(stub, job.chunks())
    assert reply.stored_bytes == job.share.nbytes == job.spec.share_bytes
    results = await compute(stub, [serde.round_request_to_proto(job_id, 0, job.weights(0))])
    assert [r.round for r in results] == [0]
    np.testing.assert_array_equal(_result(results[0], job), job.expected(0))


@pytest.mark.parametrize("moduli", [(P,), MODULI, residue_primes(2**31 - 1, 3)], ids=["1", "2", "3-largest"])
async def test_upload_then_rounds_match_the_protocol_function(moduli):
    job = small_job(rows=40, cols=5, degree=2, moduli=moduli)
    async with running_worker() as worker, stub_for(worker.address) as stub:
        await upload(stub, job.chunks(max_chunk_bytes=64))  # 3 rows per chunk: many chunks
        requests = [serde.round_request_to_proto(job.job_id, k, job.weights(k)) for k in range(3)]

        answered: asyncio.Queue[None] = asyncio.Queue()

        async def paced():
            for request in requests:  # each after the previous result, so no round is skipped as stale
                yield request
                await answered.get()

        results = []
        async for r in stub.Compute(paced(), timeout=DEADLINE):
            results.append(r)
            answered.put_nowait(None)
        assert [r.round for r in results] == [0, 1, 2]
        for r in results:
            assert (r.result.rows, r.result.cols) == (len(moduli), 5)  # one row per residue
            np.testing.assert_array_equal(_result(r, job), job.expected(r.round))
            assert r.job_id == job.job_id and r.compute_seconds >= 0


def _rounds(job, *numbers):
    return [serde.round_request_to_proto(job.job_id, n, job.weights(n)) for n in numbers]


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
        # 6 rows x 4 columns x 4 bytes in each of the 2 residue fields
        assert (status.jobs, status.share_bytes_used, status.share_bytes_cap) == (1, 192, 10_000)
        reply = await stub.EndJob(pb.EndJobRequest(job_id="ending"), timeout=DEADLINE)
        assert reply.existed and reply.freed_bytes == 192
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
            bad = small_job("bad-job").chunks()
            bad[0].block.data = np.full(len(bad[0].block.data) // 4, MODULI[0], dtype="<u4").tobytes()
            bad[0].crc32 = serde.checksum(bad[0].block.data)
            with pytest.raises(grpc.aio.AioRpcError):
                await upload(stub, bad)
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


async def test_the_share_is_prepared_for_computing_as_soon_as_its_upload_commits():
    job = small_job("early", rows=40, cols=5)
    async with running_worker() as worker, stub_for(worker.address) as stub:
        await upload(stub, job.chunks())
        stored = worker.store.get("early")
        assert stored.prepared is not None  # the first round does not wait for the conversion
        prepared = await stored.prepared
        assert prepared.shape == (len(job.moduli), 40, 5)
