"""Every public function, class and method in cpml says what it does in one docstring line."""

import importlib
import inspect
import pkgutil

import cpml

GENERATED = "cpml.wire.generated"


def public_objects():
    for info in pkgutil.walk_packages(cpml.__path__, "cpml."):
        if info.name.startswith(GENERATED):
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            if inspect.isfunction(obj):
                yield f"{module.__name__}.{name}", obj
            elif inspect.isclass(obj):
                yield f"{module.__name__}.{name}", obj
                for attr, member in vars(obj).items():
                    if attr.startswith("_") or not inspect.isfunction(member):
                        continue
                    if any(attr in vars(base) for base in obj.__mro__[1:]):
                        continue  # overrides (gRPC servicer methods, dataclass hooks) document upstream
                    yield f"{module.__name__}.{name}.{attr}", member


def test_every_public_callable_has_a_one_line_summary():
    missing = [name for name, obj in public_objects() if not (obj.__doc__ or "").strip()]
    assert not missing, "no docstring: " + ", ".join(missing)


def test_function_docstrings_are_one_line():
    long = [
        name
        for name, obj in public_objects()
        if inspect.isfunction(obj) and obj.__doc__ and len(obj.__doc__.strip().splitlines()) > 1
    ]
    assert not long, "more than one docstring line: " + ", ".join(long)
