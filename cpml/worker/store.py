"""The worker's share store: one share per job (centred int32), under a cap on the bytes held or being uploaded."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

import cpml.errors as errors
from cpml.field import basis_for
from cpml.wire.serde import CorruptData, MalformedMessage, ShareBlock, WireJobSpec, shown

if TYPE_CHECKING:
    import asyncio


class ShareStoreFull(errors.Exhausted):
    """Storing a share would exceed the worker's byte cap."""


class UnknownJob(errors.NotFound):
    """No stored job has this id."""

    def __str__(self) -> str:
        return str(self.args[0])


class JobExists(errors.AlreadyExists):
    """A job with this id is already stored or being uploaded."""


class UploadUnfinished(errors.NotReady):
    """The job's share is still being uploaded."""


@dataclass(eq=False)
class Job:
    """A stored share (centred int32) and what the worker knows about its job."""

    job_id: str
    spec: WireJobSpec
    share: np.ndarray = field(repr=False)
    last_used: float = field(default_factory=time.monotonic)
    # The share prepared for computing (centred int32 or float64): started when the upload commits, shared by
    # every compute stream.
    prepared: asyncio.Future[np.ndarray] | None = field(default=None, repr=False)
    released: bool = False
    _watchers: list[Callable[[], None]] = field(default_factory=list, repr=False)

    def touch(self) -> None:
        """Mark the job as used now (idle jobs are expired)."""
        self.last_used = time.monotonic()

    def watch(self, on_release: Callable[[], None]) -> None:
        """Call `on_release` when the job is ended or expired (at once if it already was)."""
        if self.released:
            on_release()
        else:
            self._watchers.append(on_release)

    @property
    def streams(self) -> int:
        """How many compute streams are open on this job."""
        return len(self._watchers)

    def unwatch(self, on_release: Callable[[], None]) -> None:
        """Stop watching (a compute stream that closed)."""
        if on_release in self._watchers:
            self._watchers.remove(on_release)

    def release(self) -> None:
        """Mark the job gone, drop its prepared share and tell whoever watches it."""
        self.released, self.prepared = True, None
        watchers, self._watchers = self._watchers, []
        for on_release in watchers:
            on_release()


class Upload:
    """A share being received chunk by chunk; its bytes count against the cap until committed or aborted."""

    def __init__(self, store: ShareStore, job_id: str, spec: WireJobSpec) -> None:
        self.job_id = job_id
        self.spec = spec
        self._store = store
        # Centred int32 as each chunk arrives: the form the fused step computes on, so a job holds one copy of its
        # share (the same bytes as the uint32 elements) and the first round needs no conversion pass.
        self._share = np.empty((spec.residues, spec.rows, spec.cols), dtype=np.int32)
        self._fields = basis_for(spec.moduli).fields
        self._received = np.zeros((spec.residues, spec.rows), dtype=bool)
        self._open = True

    def add(self, part: ShareBlock) -> None:
        """Place a checked chunk's rows; refuse rows already received."""
        rows = slice(part.row_offset, part.row_offset + part.block.shape[0])
        if self._received[part.residue, rows].any():
            raise MalformedMessage(
                f"share chunk at row {part.row_offset} of residue {part.residue} overlaps rows already received "
                f"for job {self.job_id!r}; each row must be sent exactly once"
            )
        self._fields[part.residue].centred(part.block, np.int32, out=self._share[part.residue, rows])
        self._received[part.residue, rows] = True

    def commit(self) -> Job:
        """Store the completed share as a job; refuse a share with rows missing."""
        missing = int(np.count_nonzero(~self._received))
        if missing:
            raise CorruptData(
                f"the upload of job {self.job_id!r} ended with {missing} of {self._received.size} rows missing "
                f"(truncated stream: {self._missing_by_residue()}); upload the whole share again"
            )
        self._open = False
        return self._store._commit(self)

    def _missing_by_residue(self) -> str:
        """Which residues lack rows, e.g. 'residue 1 lacks 6 of its 6 rows'."""
        return ", ".join(
            f"residue {residue} lacks {int(n)} of its {self.spec.rows} rows"
            for residue, n in enumerate((~self._received).sum(axis=1))
            if n
        )

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
        self._parties: dict[str, int] = {}  # MPC baseline jobs (their own id space), by their estimated bytes

    @property
    def used_bytes(self) -> int:
        """Bytes held by stored shares, uploads in progress and MPC parties."""
        return sum(self._reserved.values()) + sum(self._parties.values())

    def __len__(self) -> int:
        return len(self._jobs)

    def begin_upload(self, job_id: str, spec: WireJobSpec) -> Upload:
        """Reserve room for a job's share; refuse a duplicate id or a share over the cap."""
        if not job_id:
            raise MalformedMessage("the share upload has an empty job_id; name the job in every chunk")
        if job_id in self._reserved:
            state = "stored" if job_id in self._jobs else "being uploaded"
            raise JobExists(f"job {shown(job_id)} is already {state} on this worker; end it first or use a new id")
        self._check_room(
            f"job {shown(job_id)}",
            spec.share_bytes,
            f"its {spec.rows}x{spec.cols} share in {spec.residues} residue field(s)",
            "(smaller shares)",
        )
        self._reserved[job_id] = spec.share_bytes
        return Upload(self, job_id, spec)

    def reserve_party(self, job_id: str, nbytes: int) -> None:
        """Count an MPC party's memory against the cap; refuse a duplicate id or a party over the cap."""
        if job_id in self._parties:
            raise JobExists(f"MPC job {shown(job_id)} already exists on this worker; Leave it first")
        self._check_room(
            f"MPC job {shown(job_id)}",
            nbytes,
            "its party (share, products and BH08 pool)",
            "(smaller groups' blocks) or fewer rounds per job",
        )
        self._parties[job_id] = nbytes

    def release_party(self, job_id: str) -> int:
        """Give back an MPC party's bytes; return them (0 if it held none)."""
        return self._parties.pop(job_id, 0)

    def _check_room(self, who: str, nbytes: int, what: str, smaller: str) -> None:
        free = self.cap_bytes - self.used_bytes
        if nbytes > free:
            raise ShareStoreFull(
                f"{who} needs {nbytes} bytes for {what} but this worker has {free} of its {self.cap_bytes}-byte "
                f"cap free; end other jobs, use more workers {smaller} or raise --share-bytes-cap"
            )

    def _commit(self, upload: Upload) -> Job:
        job = self._jobs[upload.job_id] = Job(upload.job_id, upload.spec, upload._share)
        return job

    def _release(self, job_id: str) -> None:
        self._reserved.pop(job_id, None)
        job = self._jobs.pop(job_id, None)
        if job is not None:
            job.release()

    def jobs(self) -> list[Job]:
        """The stored jobs, oldest upload first."""
        return list(self._jobs.values())

    def reserved_bytes(self, job_id: str) -> int:
        """The bytes a job holds against the cap."""
        return self._reserved.get(job_id, 0)

    def get(self, job_id: str) -> Job:
        """The stored job with this id."""
        job = self._jobs.get(job_id)
        if job is None:
            if job_id in self._reserved:
                raise UploadUnfinished(
                    f"job {shown(job_id)} is still being uploaded; wait for UploadShare's reply before computing"
                )
            raise UnknownJob(
                f"job {shown(job_id)} is not stored on this worker (never uploaded, ended, expired or the worker "
                f"restarted); upload its share first"
            )
        job.touch()
        return job

    def remove(self, job_id: str) -> int:
        """Forget a job; return the bytes freed (0 if it was not stored)."""
        if job_id not in self._jobs:
            return 0
        freed = self._reserved.get(job_id, 0)
        self._release(job_id)
        return freed

    def expire(self, idle_seconds: float, now: float | None = None, orphan_seconds: float | None = None) -> list[str]:
        """Forget jobs unused for more than idle_seconds (orphan_seconds if no compute stream is open); their ids."""
        now = time.monotonic() if now is None else now
        orphan = idle_seconds if orphan_seconds is None else min(idle_seconds, orphan_seconds)
        stale = [j.job_id for j in self._jobs.values() if now - j.last_used > (idle_seconds if j.streams else orphan)]
        for job_id in stale:
            self._release(job_id)
        return stale
