from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MpcKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MPC_KIND_UNSPECIFIED: _ClassVar[MpcKind]
    MPC_KIND_DATA: _ClassVar[MpcKind]
    MPC_KIND_WEIGHTS: _ClassVar[MpcKind]
    MPC_KIND_DOUBLE: _ClassVar[MpcKind]
    MPC_KIND_RESHARE: _ClassVar[MpcKind]
    MPC_KIND_MASKED: _ClassVar[MpcKind]
    MPC_KIND_OPENED: _ClassVar[MpcKind]
    MPC_KIND_GRADIENT: _ClassVar[MpcKind]
MPC_KIND_UNSPECIFIED: MpcKind
MPC_KIND_DATA: MpcKind
MPC_KIND_WEIGHTS: MpcKind
MPC_KIND_DOUBLE: MpcKind
MPC_KIND_RESHARE: MpcKind
MPC_KIND_MASKED: MpcKind
MPC_KIND_OPENED: MpcKind
MPC_KIND_GRADIENT: MpcKind

class MpcTensor(_message.Message):
    __slots__ = ("shape", "data")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class MpcJoinRequest(_message.Message):
    __slots__ = ("job_id", "protocol", "modulus", "t", "first", "position", "rows", "cols", "degree", "coefficients", "start_round", "rounds", "peers", "moduli")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    MODULUS_FIELD_NUMBER: _ClassVar[int]
    T_FIELD_NUMBER: _ClassVar[int]
    FIRST_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    COLS_FIELD_NUMBER: _ClassVar[int]
    DEGREE_FIELD_NUMBER: _ClassVar[int]
    COEFFICIENTS_FIELD_NUMBER: _ClassVar[int]
    START_ROUND_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    MODULI_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    protocol: str
    modulus: int
    t: int
    first: int
    position: int
    rows: int
    cols: int
    degree: int
    coefficients: MpcTensor
    start_round: int
    rounds: int
    peers: _containers.RepeatedScalarFieldContainer[str]
    moduli: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, job_id: _Optional[str] = ..., protocol: _Optional[str] = ..., modulus: _Optional[int] = ..., t: _Optional[int] = ..., first: _Optional[int] = ..., position: _Optional[int] = ..., rows: _Optional[int] = ..., cols: _Optional[int] = ..., degree: _Optional[int] = ..., coefficients: _Optional[_Union[MpcTensor, _Mapping]] = ..., start_round: _Optional[int] = ..., rounds: _Optional[int] = ..., peers: _Optional[_Iterable[str]] = ..., moduli: _Optional[_Iterable[int]] = ...) -> None: ...

class MpcJoinReply(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class MpcEnvelope(_message.Message):
    __slots__ = ("job_id", "sender", "receiver", "kind", "round", "step", "payload", "crc32")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    RECEIVER_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    CRC32_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    sender: int
    receiver: int
    kind: MpcKind
    round: int
    step: int
    payload: MpcTensor
    crc32: int
    def __init__(self, job_id: _Optional[str] = ..., sender: _Optional[int] = ..., receiver: _Optional[int] = ..., kind: _Optional[_Union[MpcKind, str]] = ..., round: _Optional[int] = ..., step: _Optional[int] = ..., payload: _Optional[_Union[MpcTensor, _Mapping]] = ..., crc32: _Optional[int] = ...) -> None: ...

class MpcDeliverReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class MpcResultsRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class MpcLeaveRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class MpcLeaveReply(_message.Message):
    __slots__ = ("existed", "messages_sent", "bytes_sent", "compute_seconds", "messages_by_kind", "bytes_by_kind")
    class MessagesByKindEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class BytesByKindEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    EXISTED_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_SENT_FIELD_NUMBER: _ClassVar[int]
    BYTES_SENT_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_BY_KIND_FIELD_NUMBER: _ClassVar[int]
    BYTES_BY_KIND_FIELD_NUMBER: _ClassVar[int]
    existed: bool
    messages_sent: int
    bytes_sent: int
    compute_seconds: float
    messages_by_kind: _containers.ScalarMap[str, int]
    bytes_by_kind: _containers.ScalarMap[str, int]
    def __init__(self, existed: _Optional[bool] = ..., messages_sent: _Optional[int] = ..., bytes_sent: _Optional[int] = ..., compute_seconds: _Optional[float] = ..., messages_by_kind: _Optional[_Mapping[str, int]] = ..., bytes_by_kind: _Optional[_Mapping[str, int]] = ...) -> None: ...
