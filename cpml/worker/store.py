"""The worker's share store: one uint32 share per job, under a cap on the bytes held or being uploaded."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from cpml.wire.serde import CorruptData, MalformedMessage, ShareBlock, WireJobSpec


class ShareStoreFull(Exception):
    """Storing a share would exceed the worker's byte cap."""


class UnknownJob(KeyError):
    """No stored job has this id."""

    def __str__(self) -> str:
        return str(self.args[0])


class JobExists(Exception):
    """A job with this id is already stored or being uploaded."""


@dataclass
class Job:
    """A stored share and what the worker knows about its job."""

    job_id: str
    spec: WireJobSpec
    share: np.ndarray
    last_used: float = field(default_factory=time.monotonic)

    def touch(self) -> None:
        """Mark the job as used now (idle jobs are expired)."""
        self.last_used = time.monotonic()


class Upload:
    """A share being received chunk by chunk; its bytes count against the cap until committed or aborted."""

    def __init__(self, store: ShareStore, job_id: str, spec: WireJobSpec) -> None:
        self.job_id = job_id
        self.spec = spec
        self._store = store
        self._share = np.empty((spec.rows, spec.cols), dtype=np.uint32)
        self._received = np.zeros(spec.rows, dtype=bool)
        self._open = True

    def add(self, part: ShareBlock) -> None:
        """Place a checked chunk's rows; refuse rows already received."""
        rows = slice(part.row_offset, part.row_offset + part.block.shape[0])
        if self._received[rows].any():
            raise MalformedMessage(
                f"share chunk at row {part.row_offset} overlaps rows already received for job "
                f"{self.job_id!r}; each row must be sent exactly once")
        self._share[rows] = part.block
        self._received[rows] = True

    def commit(self) -> Job:
        """Store the completed share as a job; refuse a share with rows missing."""
        missing = int(np.count_nonzero(~self._received))
        if missing:
            raise CorruptData(
                f"the upload of job {self.job_id!r} ended with {missing} of {self.spec.rows} rows missing "
                f"(truncated stream); upload the whole share again")
        self._open = False
        return self._store._commit(self)

    def abort(self) -> None:
        """Give the reserved bytes back (no-op once committed or aborted)."""
        if self._open:
            self._open = False
            self._store._release(self.job_id)


class ShareStore:
    """Jobs by id, with every stored or in-flight share counted against `cap_bytes`."""

    def __init__(self, cap_bytes: int) -> None:
        if cap_bytes <= 0:
            raise ValueError(f"Argument 'cap_bytes' must be positive, not {cap_bytes}.")
        self.cap_bytes = cap_bytes
        self._jobs: dict[str, Job] = {}
        self._reserved: dict[str, int] = {}

    @property
    def used_bytes(self) -> int:
        """Bytes held by stored shares and uploads in progress."""
        return sum(self._reserved.values())

    def __len__(self) -> int:
        return len(self._jobs)

    def begin_upload(self, job_id: str, spec: WireJobSpec) -> Upload:
        """Reserve room for a job's share; refuse a duplicate id or a share over the cap."""
        if not job_id:
            raise MalformedMessage("the share upload has an empty job_id; name the job in every chunk")
        if job_id in self._reserved:
            raise JobExists(f"job {job_id!r} is already stored on this worker; end it first or use a new id")
        free = self.cap_bytes - self.used_bytes
        if spec.share_bytes > free:
            raise ShareStoreFull(
                f"job {job_id!r} needs {spec.share_bytes} bytes for its {spec.rows}x{spec.cols} share but this "
                f"worker has {free} of its {self.cap_bytes}-byte cap free; end other jobs, use more workers "
                f"(smaller shares) or raise --share-bytes-cap")
        self._reserved[job_id] = spec.share_bytes
        return Upload(self, job_id, spec)

    def _commit(self, upload: Upload) -> Job:
        job = self._jobs[upload.job_id] = Job(upload.job_id, upload.spec, upload._share)
        return job

    def _release(self, job_id: str) -> None:
        self._reserved.pop(job_id, None)
        self._jobs.pop(job_id, None)

    def get(self, job_id: str) -> Job:
        """The stored job with this id."""
        try:
            job = self._jobs[job_id]
        except KeyError:
            raise UnknownJob(
                f"job {job_id!r} is not stored on this worker (never uploaded, ended, expired or the worker "
                f"restarted); upload its share first") from None
        job.touch()
        return job

    def remove(self, job_id: str) -> int:
        """Forget a job; return the bytes freed (0 if it was not stored)."""
        if job_id not in self._jobs:
            return 0
        freed = self._reserved.get(job_id, 0)
        self._release(job_id)
        return freed

    def expire(self, idle_seconds: float, now: float | None = None) -> list[str]:
        """Forget jobs unused for more than idle_seconds; return their ids."""
        now = time.monotonic() if now is None else now
        stale = [j.job_id for j in self._jobs.values() if now - j.last_used > idle_seconds]
        for job_id in stale:
            self._release(job_id)
        return stale
