"""The worker's compute scheduler without gRPC: requests in, results out, through in-memory streams."""

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from helpers_cluster import small_job

from cpml.protocol.fused_step import fused_available
from cpml.wire import serde
from cpml.worker.compute import ComputeStream, RoundInput, RoundOutOfOrder, StreamIdle, prepare_soon
from cpml.worker.settings import WorkerSettings
from cpml.worker.store import ShareStore, UnknownJob


def _stored(job):
    store = ShareStore(1 << 20)
    upload = store.begin_upload(job.job_id, job.spec)
    for residue in range(job.spec.residues):
        upload.add(serde.ShareBlock(job.job_id, residue, 0, job.share[residue]))
    upload.commit()
    return store


def _request(job, round_number, job_id=None):
    return RoundInput(job_id or job.job_id, round_number, lambda spec: job.weights(round_number))


async def _run(store, requests, **settings):
    async def feed():
        for item in requests:
            if isinstance(item, float):
                await asyncio.sleep(item)
            else:
                yield item

    with ThreadPoolExecutor(1) as executor:
        stream = ComputeStream(store, executor, WorkerSettings(insecure=True, **settings))
        return [out async for out in stream.results(feed())], stream


async def test_each_round_is_computed_exactly():
    job = small_job("mem")
    outputs, stream = await _run(_stored(job), [_request(job, k) for k in range(3)] + [0.2])
    assert [out.round for out in outputs][-1] == 2 and stream.job_id == "mem"
    for out in outputs:
        np.testing.assert_array_equal(out.result, job.expected(out.round))


async def test_a_straggler_skips_to_the_newest_round():
    job = small_job("late", rows=400, cols=64)
    outputs, stream = await _run(_stored(job), [_request(job, k) for k in range(20)] + [0.5])
    rounds = [out.round for out in outputs]
    assert rounds[-1] == 19 and rounds == sorted(rounds) and len(rounds) + stream.rounds.skipped == 20


@pytest.mark.parametrize(
    "requests, error",
    [
        (lambda job: [_request(job, 2), _request(job, 2)], RoundOutOfOrder),
        (lambda job: [_request(job, 0, job_id="nobody")], UnknownJob),
        (lambda job: [_request(job, 0), _request(job, 1, job_id="other")], serde.MalformedMessage),
    ],
)
async def test_refusals_come_out_as_their_error(requests, error):
    job = small_job("refused")
    with pytest.raises(error):
        await _run(_stored(job), [*requests(job), 0.3])


async def test_a_silent_stream_ends_with_stream_idle():
    job = small_job("idle")
    with pytest.raises(StreamIdle):
        await _run(_stored(job), [_request(job, 0), 1.0], job_idle_seconds=0.2)


async def test_a_worker_holds_one_copy_of_its_share():
    # stored centred as it arrives: the fused step computes on the stored array itself (before, a job held the
    # uint32 share and a converted copy, and the conversion's temporaries: over three times the share)
    job = small_job("one-copy")
    store = _stored(job)
    stored = store.get("one-copy")
    with ThreadPoolExecutor(1) as executor:
        prepared = await prepare_soon(stored, executor)
    assert fused_available(max(job.spec.moduli)) and prepared is stored.share
    assert store.used_bytes == stored.share.nbytes
