from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Vector(_message.Message):
    __slots__ = ("size", "data")
    SIZE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    size: int
    data: bytes
    def __init__(self, size: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class JoinRequest(_message.Message):
    __slots__ = ("run_id", "name", "records", "dimension", "token", "feature_schema")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    FEATURE_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    name: str
    records: int
    dimension: int
    token: str
    feature_schema: str
    def __init__(self, run_id: _Optional[str] = ..., name: _Optional[str] = ..., records: _Optional[int] = ..., dimension: _Optional[int] = ..., token: _Optional[str] = ..., feature_schema: _Optional[str] = ...) -> None: ...

class JoinReply(_message.Message):
    __slots__ = ("party_id", "rounds", "scheme", "epsilon", "delta")
    PARTY_ID_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    SCHEME_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    party_id: str
    rounds: int
    scheme: str
    epsilon: float
    delta: float
    def __init__(self, party_id: _Optional[str] = ..., rounds: _Optional[int] = ..., scheme: _Optional[str] = ..., epsilon: _Optional[float] = ..., delta: _Optional[float] = ...) -> None: ...

class TaskRequest(_message.Message):
    __slots__ = ("run_id", "party_id", "after_round")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PARTY_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_ROUND_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    party_id: str
    after_round: int
    def __init__(self, run_id: _Optional[str] = ..., party_id: _Optional[str] = ..., after_round: _Optional[int] = ...) -> None: ...

class PartyTask(_message.Message):
    __slots__ = ("run_id", "round", "finished", "weights", "noise_multiplier", "run_noise_multiplier", "total_records", "learning_rate", "clip", "l2", "local_steps", "sampling_rate", "stop_reason", "release_epsilon", "party_epsilon")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    NOISE_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    RUN_NOISE_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    TOTAL_RECORDS_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    CLIP_FIELD_NUMBER: _ClassVar[int]
    L2_FIELD_NUMBER: _ClassVar[int]
    LOCAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_RATE_FIELD_NUMBER: _ClassVar[int]
    STOP_REASON_FIELD_NUMBER: _ClassVar[int]
    RELEASE_EPSILON_FIELD_NUMBER: _ClassVar[int]
    PARTY_EPSILON_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    round: int
    finished: bool
    weights: Vector
    noise_multiplier: float
    run_noise_multiplier: float
    total_records: int
    learning_rate: float
    clip: float
    l2: float
    local_steps: int
    sampling_rate: float
    stop_reason: str
    release_epsilon: float
    party_epsilon: float
    def __init__(self, run_id: _Optional[str] = ..., round: _Optional[int] = ..., finished: _Optional[bool] = ..., weights: _Optional[_Union[Vector, _Mapping]] = ..., noise_multiplier: _Optional[float] = ..., run_noise_multiplier: _Optional[float] = ..., total_records: _Optional[int] = ..., learning_rate: _Optional[float] = ..., clip: _Optional[float] = ..., l2: _Optional[float] = ..., local_steps: _Optional[int] = ..., sampling_rate: _Optional[float] = ..., stop_reason: _Optional[str] = ..., release_epsilon: _Optional[float] = ..., party_epsilon: _Optional[float] = ...) -> None: ...

class UpdateRequest(_message.Message):
    __slots__ = ("run_id", "party_id", "round", "records", "weights")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PARTY_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    party_id: str
    round: int
    records: int
    weights: Vector
    def __init__(self, run_id: _Optional[str] = ..., party_id: _Optional[str] = ..., round: _Optional[int] = ..., records: _Optional[int] = ..., weights: _Optional[_Union[Vector, _Mapping]] = ...) -> None: ...

class UpdateReply(_message.Message):
    __slots__ = ("round", "waiting_for")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    WAITING_FOR_FIELD_NUMBER: _ClassVar[int]
    round: int
    waiting_for: int
    def __init__(self, round: _Optional[int] = ..., waiting_for: _Optional[int] = ...) -> None: ...
