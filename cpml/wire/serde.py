"""Paired x_to_proto / x_from_proto functions: the only place generated message types are built or read.

Field elements travel as packed little-endian uint32 bytes, row-major, one slice per residue modulus.
Every `*_from_proto` checks sizes, that every element lies in [0, p_j) for its residue's modulus p_j, and
checksums, raising MalformedMessage or CorruptData with a message a person can act on; the servicer maps
those to gRPC status codes.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

import cpml.errors as errors
from cpml.field.rns import MAX_RESIDUES
from cpml.options import DEFAULT_CHUNK_BYTES
from cpml.protocol import JobSpec
from cpml.protocol.plan import MODELS
from cpml.wire.generated.v1 import worker_pb2 as pb

ELEMENT_BYTES = 4
ELEMENT_DTYPE = np.dtype("<u4")
# The largest modulus whose elements fit the uint32 wire format.
MAX_WIRE_MODULUS = 1 << 32
# The sigmoid polynomial's degree r: every coefficient c_i is scaled by 2^((r-i)(l_x+l_w)) and must stay
# below p < 2^31, so no useful plan goes past r = 30; the bound keeps a hostile spec from making the
# worker build rows x r working arrays of any size.
MAX_DEGREE = 32
MAX_CLASSES = 1024  # weight columns a job may declare (one-vs-rest classes)
# Job and run ids are short names (the master uses 32 hex digits); they are echoed in logs and statuses.
MAX_ID_LENGTH = 128


class WireError(errors.InvalidInput):
    """A message that cannot be turned into valid domain values."""


class MalformedMessage(WireError):
    """Wrong sizes, shapes, missing fields or values that are not field elements."""


class CorruptData(WireError):
    """A checksum mismatch or a stream that ended early: the bytes were damaged in transit."""

    status = "DATA_LOSS"


def shown(text: str, limit: int = 48) -> str:
    """repr(text), cut to `limit` characters, for echoing an untrusted string in a log line or a status."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def check_id(value: str, what: str = "job_id") -> str:
    """Refuse an id that is empty, longer than MAX_ID_LENGTH or holds unprintable characters; return it."""
    if not value:
        raise MalformedMessage(f"the request has an empty {what}; name the job in every message")
    if len(value) > MAX_ID_LENGTH or not value.isprintable():
        raise MalformedMessage(
            f"{what} {shown(value)} must be 1 to {MAX_ID_LENGTH} printable characters (the master uses 32 hex digits)"
        )
    return value


@dataclass(frozen=True, slots=True)
class WireJobSpec:
    """What a worker learns about a job: the residue fields, the sigmoid polynomial and its share's shape."""

    moduli: tuple[int, ...]
    degree: int
    rows: int
    cols: int
    coefficients: np.ndarray  # residues x (r+1); residues x 0 for r = 0 (the exact sigmoid)
    model: str
    classes: int = 1  # C weight columns (one-vs-rest models): weights d x C r, results d x C per residue

    @classmethod
    def of(cls, spec: JobSpec, model: str) -> WireJobSpec:
        """The wire form of the protocol's JobSpec."""
        return cls(
            moduli=tuple(spec.moduli),
            degree=spec.r,
            rows=spec.rows,
            cols=spec.d,
            coefficients=spec.coefficient_array(),
            model=model,
            classes=spec.classes,
        )

    def result_cols(self, stage: int = 0) -> int:
        """Values per residue in an exchange's result: d x C (rows x C at stage 0 of a degree-0 job)."""
        return self.rows * self.classes if self.degree == 0 and stage == 0 else self.cols * self.classes

    @property
    def stages(self) -> int:
        """Exchanges a round takes: 2 with the exact sigmoid (degree 0), else 1."""
        return 2 if self.degree == 0 else 1

    @property
    def weight_copies(self) -> int:
        """Quantizations of each weight column a round sends: r (one for degree 0)."""
        return max(self.degree, 1)

    @property
    def residues(self) -> int:
        """How many residue fields every value lives in."""
        return len(self.moduli)

    @property
    def round_bytes(self) -> int:
        """Bytes of the largest values a round's request or result carries (both exchanges, all residues)."""
        largest = max(
            self.cols * self.classes * self.weight_copies, *(self.result_cols(stage) for stage in range(self.stages))
        )
        return self.residues * largest * ELEMENT_BYTES

    @property
    def share_bytes(self) -> int:
        """Bytes the worker needs to store this job's share."""
        return self.residues * self.rows * self.cols * ELEMENT_BYTES


@dataclass(frozen=True, slots=True)
class ShareBlock:
    """Rows [row_offset, row_offset + len(block)) of one worker's share in residue field `residue`."""

    job_id: str
    residue: int
    row_offset: int
    block: np.ndarray


@dataclass(frozen=True, slots=True)
class JobSummary:
    """What an operator may know of a stored job: its id, shape, bytes, idleness and open compute streams."""

    job_id: str
    residues: int
    rows: int
    cols: int
    bytes: int
    idle_seconds: float
    compute_streams: int


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    """A worker's capabilities and load, as reported by its Status call."""

    version: str
    max_modulus: int
    share_bytes_cap: int
    share_bytes_used: int
    jobs: int
    max_message_bytes: int


def checksum(data: bytes | memoryview) -> int:
    """CRC-32 (zlib) of a chunk's packed bytes."""
    return zlib.crc32(data) & 0xFFFFFFFF


def pack_elements(values: np.ndarray) -> bytes:
    """Pack an array of field elements (uint32) as little-endian bytes, row-major."""
    if values.dtype != np.uint32:
        raise TypeError(f"Argument 'values' must have dtype uint32, not {values.dtype}.")
    return np.ascontiguousarray(values, dtype=ELEMENT_DTYPE).tobytes()


def unpack_elements(data: bytes, shape: tuple[int, ...], modulus: int, what: str) -> np.ndarray:
    """Read packed little-endian elements of the given shape, refusing wrong sizes and values >= modulus."""
    expected = ELEMENT_BYTES
    for extent in shape:  # Python ints: a hostile shape cannot overflow into a small or negative size
        expected *= int(extent)
    if len(data) != expected:
        raise MalformedMessage(
            f"{what} has {len(data)} bytes but shape {'x'.join(map(str, shape))} needs {expected} "
            f"({ELEMENT_BYTES}-byte little-endian elements); the sender packed the wrong array"
        )
    values = np.frombuffer(data, dtype=ELEMENT_DTYPE).reshape(shape).astype(np.uint32, copy=False)
    if values.size and int(values.max()) >= modulus:  # one pass; count only when refusing
        too_big = int(np.count_nonzero(values >= modulus))
        if too_big:
            raise MalformedMessage(
                f"{what} holds {too_big} value(s) >= the modulus {modulus}, so they are not field "
                f"elements; reduce every value mod p before sending"
            )
    return values


def unpack_residues(data: bytes, shape: tuple[int, ...], moduli: tuple[int, ...], what: str) -> np.ndarray:
    """Read packed elements of shape (residues, ...), refusing sizes and values >= each residue's modulus."""
    values = unpack_elements(data, shape, max(moduli), what)
    for residue, modulus in enumerate(moduli):
        part = values[residue]
        if part.size and int(part.max()) >= modulus:
            raise MalformedMessage(
                f"{what} holds {int(np.count_nonzero(part >= modulus))} value(s) >= the modulus {modulus} of "
                f"residue {residue}, so they are not field elements; reduce every value mod its prime"
            )
    return values


def block_to_proto(values: np.ndarray) -> pb.FieldBlock:
    """A 1-D or 2-D uint32 array as a FieldBlock (a 1-D array becomes one row)."""
    matrix = values.reshape(1, -1) if values.ndim == 1 else values
    if matrix.ndim != 2:
        raise ValueError(f"Argument 'values' must be 1-D or 2-D, not {values.ndim}-D.")
    rows, cols = matrix.shape
    return pb.FieldBlock(rows=rows, cols=cols, data=pack_elements(matrix))


def block_from_proto(msg: pb.FieldBlock, shape: tuple[int, int], modulus: int, what: str) -> np.ndarray:
    """The FieldBlock's elements as a uint32 array, refusing any shape but `shape`."""
    if (msg.rows, msg.cols) != tuple(shape):
        raise MalformedMessage(
            f"{what} is {msg.rows}x{msg.cols} but this job needs {shape[0]}x{shape[1]}; "
            f"check that the master and worker agree on the job's dimensions"
        )
    return unpack_elements(msg.data, (msg.rows, msg.cols), modulus, what)


def job_spec_to_proto(spec: WireJobSpec) -> pb.JobSpec:
    """A job spec as its protobuf message."""
    return pb.JobSpec(
        moduli=spec.moduli,
        degree=spec.degree,
        rows=spec.rows,
        cols=spec.cols,
        coefficients=block_to_proto(spec.coefficients),
        model=spec.model,
        classes=spec.classes if spec.classes > 1 else 0,
    )


def check_moduli(single: int, moduli: Sequence[int], what: str) -> tuple[int, ...]:
    """The residue moduli a message declares; refuses the single-modulus format and lists the wire cannot carry."""
    if single:
        raise MalformedMessage(
            f"{what} names the single modulus {single} (the cpml 0.1 format); this worker computes in several "
            f"residue fields and needs the list `moduli`: upgrade the master to the worker's version"
        )
    if not 1 <= len(moduli) <= MAX_RESIDUES:
        raise MalformedMessage(f"{what} declares {len(moduli)} residue moduli; send 1 to {MAX_RESIDUES}")
    checked = tuple(int(m) for m in moduli)
    if len(set(checked)) != len(checked):
        raise MalformedMessage(
            f"{what} repeats a residue modulus ({', '.join(map(str, checked))}); the moduli must be distinct primes"
        )
    for modulus in checked:
        if not 2 < modulus < MAX_WIRE_MODULUS:
            raise MalformedMessage(f"modulus {modulus} cannot travel as uint32 field elements; use primes in (2, 2^32)")
    return checked


def job_spec_from_proto(msg: pb.JobSpec) -> WireJobSpec:
    """A JobSpec message as a WireJobSpec, refusing empty shapes and moduli the wire cannot carry."""
    moduli = check_moduli(msg.modulus, msg.moduli, "job spec")
    if msg.rows == 0 or msg.cols == 0:
        raise MalformedMessage(
            f"job spec declares an empty share ({msg.rows}x{msg.cols}); the share needs at least one row and one column"
        )
    if not 0 <= msg.degree <= MAX_DEGREE:
        raise MalformedMessage(
            f"job spec declares sigmoid degree {msg.degree}; the degree r must be between 0 and {MAX_DEGREE}"
        )
    if msg.model not in MODELS:
        raise MalformedMessage(f"job spec declares model {shown(msg.model)}; use one of {', '.join(MODELS)}")
    if msg.degree == 0 and msg.model != "logistic":
        raise MalformedMessage(
            f"job spec declares sigmoid degree 0 (the exact sigmoid) for model {shown(msg.model)}; only logistic "
            f"regression has a sigmoid"
        )
    shape = (len(moduli), msg.degree + 1 if msg.degree else 0)
    if (msg.coefficients.rows, msg.coefficients.cols) != shape:
        raise MalformedMessage(
            f"the sigmoid coefficients are {msg.coefficients.rows}x{msg.coefficients.cols} but this job needs "
            f"{shape[0]}x{shape[1]} (one row per residue modulus, r+1 columns, none for r = 0)"
        )
    classes = max(1, msg.classes)
    if classes > MAX_CLASSES or (classes > 1 and msg.model != "logistic"):
        raise MalformedMessage(
            f"job spec declares {msg.classes} classes for model {shown(msg.model)}; one-vs-rest "
            f"logistic regression takes 2 to {MAX_CLASSES} weight columns, linear regression one"
        )
    coefficients = unpack_residues(msg.coefficients.data, shape, moduli, "the sigmoid coefficients")
    return WireJobSpec(
        moduli=moduli,
        degree=msg.degree,
        rows=msg.rows,
        cols=msg.cols,
        coefficients=coefficients,
        model=msg.model,
        classes=classes,
    )


def rows_per_chunk(cols: int, max_chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """How many share rows of `cols` elements fit in one chunk of at most max_chunk_bytes (at least 1)."""
    if cols <= 0:
        raise ValueError(f"Argument 'cols' must be positive, not {cols}.")
    return max(1, max_chunk_bytes // (cols * ELEMENT_BYTES))


def share_chunks_to_proto(
    job_id: str,
    row_offset: int,
    block: np.ndarray,
    spec: WireJobSpec | None = None,
    max_chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    residue: int = 0,
) -> Iterator[pb.ShareChunk]:
    """Split rows of a share (one residue) into checksummed ShareChunk messages; the first carries `spec`."""
    step = rows_per_chunk(block.shape[1], max_chunk_bytes)
    for start in range(0, block.shape[0], step):
        piece = block_to_proto(block[start : start + step])
        msg = pb.ShareChunk(
            job_id=job_id, row_offset=row_offset + start, block=piece, crc32=checksum(piece.data), residue=residue
        )
        if spec is not None and start == 0:
            msg.spec.CopyFrom(job_spec_to_proto(spec))
        yield msg


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if not value:
            out.append(low)
            return bytes(out)
        out.append(low | 0x80)


def _length_delimited(field: int, size: int) -> bytes:
    return _varint(field << 3 | 2) + _varint(size)


def share_chunks_to_wire(
    job_id: str,
    row_offset: int,
    block: np.ndarray,
    spec: WireJobSpec | None = None,
    max_chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    residue: int = 0,
) -> Iterator[tuple[bytes, int]]:
    """share_chunks_to_proto, already serialized with one copy of the elements: (message, element bytes)."""
    # The upload moves every share byte once; building messages through protobuf objects copies each
    # byte three more times on the master's event loop. This writes the same wire format directly
    # (fields in number order, proto3 zero values omitted): byte-identical to SerializeToString.
    job = job_id.encode()
    head = _length_delimited(1, len(job)) + job if job else b""
    if spec is not None:
        spec_bytes = job_spec_to_proto(spec).SerializeToString()
        first_head = head + _length_delimited(2, len(spec_bytes)) + spec_bytes
    else:
        first_head = head
    if block.dtype != np.uint32:
        raise TypeError(f"Argument 'block' must have dtype uint32, not {block.dtype}.")
    step = rows_per_chunk(block.shape[1], max_chunk_bytes)
    for start in range(0, block.shape[0], step):
        piece = np.ascontiguousarray(block[start : start + step], dtype=ELEMENT_DTYPE)
        data = memoryview(piece.data).cast("B")
        rows, cols = piece.shape
        inner = _varint(1 << 3) + _varint(rows) + _varint(2 << 3) + _varint(cols) + _length_delimited(3, len(data))
        offset = row_offset + start
        crc = checksum(data)
        yield (
            b"".join(
                (
                    first_head if start == 0 else head,
                    _varint(3 << 3) + _varint(offset) if offset else b"",
                    _length_delimited(4, len(inner) + len(data)),
                    inner,
                    data,
                    _varint(5 << 3 | 5) + crc.to_bytes(4, "little") if crc else b"",
                    _varint(6 << 3) + _varint(residue) if residue else b"",
                )
            ),
            len(data),
        )


def share_chunk_from_proto(msg: pb.ShareChunk, spec: WireJobSpec) -> ShareBlock:
    """A ShareChunk's rows, checked against the job's spec and the chunk's checksum."""
    data = msg.block.data  # read once: every access copies the bytes out of the message
    if msg.residue >= spec.residues:
        raise MalformedMessage(
            f"share chunk at row {msg.row_offset} names residue {msg.residue} but job {msg.job_id!r} declared "
            f"{spec.residues} moduli (residues 0..{spec.residues - 1})"
        )
    crc = checksum(data)
    if crc != msg.crc32:
        raise CorruptData(
            f"share chunk at row {msg.row_offset} of job {msg.job_id!r} fails its CRC-32 check "
            f"({crc:#010x} != {msg.crc32:#010x}); the bytes were damaged, re-upload the share"
        )
    if msg.block.cols != spec.cols:
        raise MalformedMessage(
            f"share chunk at row {msg.row_offset} has {msg.block.cols} columns but job {msg.job_id!r} "
            f"declared {spec.cols}"
        )
    if msg.block.rows == 0 or msg.row_offset + msg.block.rows > spec.rows:
        raise MalformedMessage(
            f"share chunk covers rows [{msg.row_offset}, {msg.row_offset + msg.block.rows}) but job "
            f"{msg.job_id!r} declared {spec.rows} rows; chunks must be non-empty and inside the share"
        )
    block = unpack_elements(
        data,
        (msg.block.rows, msg.block.cols),
        spec.moduli[msg.residue],
        f"share chunk at row {msg.row_offset} of residue {msg.residue}",
    )
    return ShareBlock(job_id=msg.job_id, residue=msg.residue, row_offset=msg.row_offset, block=block)


def round_request_to_proto(job_id: str, round_number: int, values: np.ndarray, stage: int = 0) -> pb.RoundRequest:
    """One exchange's encoded values for one worker: weights (residues x d x C r) or sigmoid values (stage 1)."""
    residues, rows, cols = values.shape
    block = block_to_proto(values.reshape(residues * rows, cols))
    if stage == 0:
        return pb.RoundRequest(job_id=job_id, round=round_number, weights=block)
    return pb.RoundRequest(job_id=job_id, round=round_number, stage=stage, sigmoid_values=block)


def round_request_from_proto(msg: pb.RoundRequest, spec: WireJobSpec) -> np.ndarray:
    """The encoded values of a RoundRequest as uint32[residues, d, C r] (or [residues, rows, C] at stage 1), checked."""
    if msg.stage >= spec.stages:
        raise MalformedMessage(
            f"round {msg.round} asks for stage {msg.stage}, but this job's rounds have "
            f"{'stages 0 and 1' if spec.stages == 2 else 'stage 0 only'} (stage 1 is for jobs of sigmoid degree 0)"
        )
    if msg.stage == 0:
        block, what, rows, cols = msg.weights, "weights", spec.cols, spec.classes * spec.weight_copies
        meaning = "residues x d rows, classes x r columns"
    else:
        block, what, rows, cols = msg.sigmoid_values, "sigmoid values", spec.rows, spec.classes
        meaning = "residues x share rows, classes columns"
    what = f"round {msg.round} {what}"
    shape = (spec.residues * rows, cols)
    if (block.rows, block.cols) != shape:
        raise MalformedMessage(
            f"{what} are {block.rows}x{block.cols} but this job needs {shape[0]}x{shape[1]} ({meaning}); check "
            f"that the master and worker agree on the job's dimensions"
        )
    return unpack_residues(block.data, (spec.residues, rows, cols), spec.moduli, what)


def round_result_to_proto(
    job_id: str, round_number: int, result: np.ndarray, compute_seconds: float, stage: int = 0
) -> pb.RoundResult:
    """A worker's result for one exchange: residues x dC (or residues x rows C, the products of stage 0, r = 0)."""
    return pb.RoundResult(
        job_id=job_id, round=round_number, result=block_to_proto(result), compute_seconds=compute_seconds, stage=stage
    )


def round_result_from_proto(msg: pb.RoundResult, moduli: tuple[int, ...], cols: int) -> np.ndarray:
    """A RoundResult's values as a uint32[residues, cols] array (cols from WireJobSpec.result_cols), checked."""
    what = f"round {msg.round} result"
    if (msg.result.rows, msg.result.cols) != (len(moduli), cols):
        raise MalformedMessage(
            f"{what} is {msg.result.rows}x{msg.result.cols} but this job needs {len(moduli)}x{cols} "
            f"(one row per residue modulus)"
        )
    return unpack_residues(msg.result.data, (len(moduli), cols), moduli, what)


def status_to_proto(status: WorkerStatus) -> pb.StatusReply:
    """A worker's status as its protobuf reply."""
    return pb.StatusReply(
        version=status.version,
        max_modulus=status.max_modulus,
        share_bytes_cap=status.share_bytes_cap,
        share_bytes_used=status.share_bytes_used,
        jobs=status.jobs,
        max_message_bytes=status.max_message_bytes,
    )


def status_from_proto(msg: pb.StatusReply) -> WorkerStatus:
    """A StatusReply as a WorkerStatus."""
    return WorkerStatus(
        version=msg.version,
        max_modulus=msg.max_modulus,
        share_bytes_cap=msg.share_bytes_cap,
        share_bytes_used=msg.share_bytes_used,
        jobs=msg.jobs,
        max_message_bytes=msg.max_message_bytes,
    )


def jobs_to_proto(jobs: list[JobSummary]) -> pb.ListJobsReply:
    """A worker's stored jobs as its ListJobs reply."""
    return pb.ListJobsReply(
        jobs=[
            pb.JobInfo(
                job_id=j.job_id,
                residues=j.residues,
                rows=j.rows,
                cols=j.cols,
                bytes=j.bytes,
                idle_seconds=j.idle_seconds,
                compute_streams=j.compute_streams,
            )
            for j in jobs
        ]
    )


def jobs_from_proto(msg: pb.ListJobsReply) -> list[JobSummary]:
    """A ListJobs reply as JobSummary values."""
    return [
        JobSummary(
            job_id=j.job_id,
            residues=j.residues,
            rows=j.rows,
            cols=j.cols,
            bytes=j.bytes,
            idle_seconds=j.idle_seconds,
            compute_streams=j.compute_streams,
        )
        for j in msg.jobs
    ]


def status_request() -> pb.StatusRequest:
    """Ask a worker for its load."""
    return pb.StatusRequest()


def list_jobs_request() -> pb.ListJobsRequest:
    """Ask a worker which jobs it holds."""
    return pb.ListJobsRequest()


def end_job_request(job_id: str) -> pb.EndJobRequest:
    """Ask a worker to forget a job and free its share."""
    return pb.EndJobRequest(job_id=check_id(job_id))


def end_job_reply(freed_bytes: int) -> pb.EndJobReply:
    """A worker's answer to EndJob: whether the job existed and the bytes it freed."""
    return pb.EndJobReply(existed=freed_bytes > 0, freed_bytes=freed_bytes)


def upload_reply(job_id: str, stored_bytes: int) -> pb.UploadReply:
    """A worker's receipt for a stored share."""
    return pb.UploadReply(job_id=job_id, stored_bytes=stored_bytes)


def upload_reply_from_wire(data: bytes) -> pb.UploadReply:
    """Parse the UploadReply of the raw upload path (whose requests are pre-serialized chunks)."""
    return pb.UploadReply.FromString(data)
