from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FieldBlock(_message.Message):
    __slots__ = ("rows", "cols", "data")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    COLS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    rows: int
    cols: int
    data: bytes
    def __init__(self, rows: _Optional[int] = ..., cols: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class JobSpec(_message.Message):
    __slots__ = ("modulus", "degree", "rows", "cols", "coefficients", "model", "moduli", "classes")
    MODULUS_FIELD_NUMBER: _ClassVar[int]
    DEGREE_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    COLS_FIELD_NUMBER: _ClassVar[int]
    COEFFICIENTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODULI_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    modulus: int
    degree: int
    rows: int
    cols: int
    coefficients: FieldBlock
    model: str
    moduli: _containers.RepeatedScalarFieldContainer[int]
    classes: int
    def __init__(self, modulus: _Optional[int] = ..., degree: _Optional[int] = ..., rows: _Optional[int] = ..., cols: _Optional[int] = ..., coefficients: _Optional[_Union[FieldBlock, _Mapping]] = ..., model: _Optional[str] = ..., moduli: _Optional[_Iterable[int]] = ..., classes: _Optional[int] = ...) -> None: ...

class ShareChunk(_message.Message):
    __slots__ = ("job_id", "spec", "row_offset", "block", "crc32", "residue")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    ROW_OFFSET_FIELD_NUMBER: _ClassVar[int]
    BLOCK_FIELD_NUMBER: _ClassVar[int]
    CRC32_FIELD_NUMBER: _ClassVar[int]
    RESIDUE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    spec: JobSpec
    row_offset: int
    block: FieldBlock
    crc32: int
    residue: int
    def __init__(self, job_id: _Optional[str] = ..., spec: _Optional[_Union[JobSpec, _Mapping]] = ..., row_offset: _Optional[int] = ..., block: _Optional[_Union[FieldBlock, _Mapping]] = ..., crc32: _Optional[int] = ..., residue: _Optional[int] = ...) -> None: ...

class UploadReply(_message.Message):
    __slots__ = ("job_id", "stored_bytes")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STORED_BYTES_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    stored_bytes: int
    def __init__(self, job_id: _Optional[str] = ..., stored_bytes: _Optional[int] = ...) -> None: ...

class RoundRequest(_message.Message):
    __slots__ = ("job_id", "round", "weights")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    round: int
    weights: FieldBlock
    def __init__(self, job_id: _Optional[str] = ..., round: _Optional[int] = ..., weights: _Optional[_Union[FieldBlock, _Mapping]] = ...) -> None: ...

class RoundResult(_message.Message):
    __slots__ = ("job_id", "round", "result", "compute_seconds")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    round: int
    result: FieldBlock
    compute_seconds: float
    def __init__(self, job_id: _Optional[str] = ..., round: _Optional[int] = ..., result: _Optional[_Union[FieldBlock, _Mapping]] = ..., compute_seconds: _Optional[float] = ...) -> None: ...

class EndJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class EndJobReply(_message.Message):
    __slots__ = ("existed", "freed_bytes")
    EXISTED_FIELD_NUMBER: _ClassVar[int]
    FREED_BYTES_FIELD_NUMBER: _ClassVar[int]
    existed: bool
    freed_bytes: int
    def __init__(self, existed: _Optional[bool] = ..., freed_bytes: _Optional[int] = ...) -> None: ...

class JobInfo(_message.Message):
    __slots__ = ("job_id", "residues", "rows", "cols", "bytes", "idle_seconds", "compute_streams")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    RESIDUES_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    COLS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    IDLE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_STREAMS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    residues: int
    rows: int
    cols: int
    bytes: int
    idle_seconds: float
    compute_streams: int
    def __init__(self, job_id: _Optional[str] = ..., residues: _Optional[int] = ..., rows: _Optional[int] = ..., cols: _Optional[int] = ..., bytes: _Optional[int] = ..., idle_seconds: _Optional[float] = ..., compute_streams: _Optional[int] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListJobsReply(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[JobInfo]
    def __init__(self, jobs: _Optional[_Iterable[_Union[JobInfo, _Mapping]]] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("version", "max_modulus", "share_bytes_cap", "share_bytes_used", "jobs", "max_message_bytes")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MAX_MODULUS_FIELD_NUMBER: _ClassVar[int]
    SHARE_BYTES_CAP_FIELD_NUMBER: _ClassVar[int]
    SHARE_BYTES_USED_FIELD_NUMBER: _ClassVar[int]
    JOBS_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    version: str
    max_modulus: int
    share_bytes_cap: int
    share_bytes_used: int
    jobs: int
    max_message_bytes: int
    def __init__(self, version: _Optional[str] = ..., max_modulus: _Optional[int] = ..., share_bytes_cap: _Optional[int] = ..., share_bytes_used: _Optional[int] = ..., jobs: _Optional[int] = ..., max_message_bytes: _Optional[int] = ...) -> None: ...
