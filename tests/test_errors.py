"""One error model: every cpml error has a valid gRPC status and exit code, and each exit code one meaning."""

import importlib
import pkgutil

import grpc
import pytest

import cpml
from cpml.errors import CpmlError, ExitCode, exit_codes_help


def _all_errors() -> set[type[CpmlError]]:
    for info in pkgutil.walk_packages(cpml.__path__, "cpml."):
        if ".generated" not in info.name and not info.name.endswith("__main__"):
            importlib.import_module(info.name)
    found, todo = set(), [CpmlError]
    while todo:
        cls = todo.pop()
        found.add(cls)
        todo.extend(cls.__subclasses__())
    return found


ERRORS = sorted(_all_errors(), key=lambda cls: f"{cls.__module__}.{cls.__qualname__}")


@pytest.mark.parametrize("error", ERRORS, ids=lambda cls: f"{cls.__module__}.{cls.__qualname__}")
def test_every_error_names_a_real_status_and_a_registered_exit_code(error):
    assert isinstance(grpc.StatusCode[error.status], grpc.StatusCode)
    assert isinstance(error.exit_code, ExitCode)


def test_the_errors_of_every_layer_share_the_root():
    names = {f"{cls.__module__}.{cls.__name__}" for cls in ERRORS}
    assert {
        "cpml.worker.store.ShareStoreFull",
        "cpml.wire.serde.CorruptData",
        "cpml.master.cluster.NotEnoughWorkers",
        "cpml.dp.session.UnknownParty",
        "cpml.field.errors.TooManyErrors",
    } <= names


def test_refusals_keep_their_specific_status_and_exit_code():
    from cpml.dp.session import UnknownParty
    from cpml.master.cluster import NotEnoughWorkers, WorkersUnsuitable
    from cpml.wire.serde import CorruptData, MalformedMessage
    from cpml.worker.store import ShareStoreFull

    assert (CorruptData.status, MalformedMessage.status) == ("DATA_LOSS", "INVALID_ARGUMENT")
    assert (ShareStoreFull.status, UnknownParty.status) == ("RESOURCE_EXHAUSTED", "NOT_FOUND")
    assert (NotEnoughWorkers.exit_code, WorkersUnsuitable.exit_code) == (
        ExitCode.NOT_ENOUGH_WORKERS,
        ExitCode.UNSUITABLE,
    )
    assert issubclass(MalformedMessage, ValueError)  # an invalid input is still a ValueError to callers


def test_each_exit_code_has_one_meaning_and_help():
    assert len({int(code) for code in ExitCode}) == len(ExitCode)
    text = exit_codes_help(*ExitCode)
    assert all(f"{int(code)} " in text for code in ExitCode)
