"""Entry points in the researcher's code (`package.module:name`), and errors from that code
told as the spec field, the researcher's `file:line` and the exception's own text."""

from __future__ import annotations

import importlib
import inspect
import traceback
from collections.abc import Iterator
from types import ModuleType

from trainer.errors import SpecError
from trainer.model.code import StagedCode
from trainer.redact import Secrets

MAX_TEXT = 400
"""Characters of an exception's text kept in a message."""
IMAGE_HINT = (
    "the training image has torch, numpy and the standard library; for other packages, "
    "build your own image FROM ours and name it in `resources.image`"
)


def load_entry(ref: str, field: str, code: StagedCode) -> object:
    """The callable `ref` names, imported from the staged code; SpecError naming `field`."""
    module_name, _, attr = ref.partition(":")
    module = _import(module_name, field, code)
    shown = code.display(module.__file__ or "") or module_name
    if not hasattr(module, attr):
        raise _error(field, f"{shown} has no `{attr}`")
    found = getattr(module, attr)
    if not callable(found):
        raise _error(field, f"{shown}: `{attr}` is a {type(found).__name__}, not callable")
    return found


def _import(module_name: str, field: str, code: StagedCode) -> ModuleType:
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if where(exc, code) is None and (module_name + ".").startswith(missing + "."):
            files = code.packed.files
            listed = ", ".join(files[:8]) + (", …" if len(files) > 8 else "")
            raise _error(
                field, f"no module `{module_name}` in code.path {code.spec.path} ({listed})"
            ) from None
        raise user_error(field, exc, code, hint=IMAGE_HINT) from None
    except Exception as exc:
        raise user_error(field, exc, code) from None
    if code.display(module.__file__ or "") is None:
        raise _error(
            field,
            f"`{module_name}` is not in code.path {code.spec.path}: it imports from "
            f"{module.__file__}; rename the module",
        )
    return module


def user_error(
    field: str,
    exc: BaseException,
    code: StagedCode | None,
    at: tuple[object, ...] = (),
    hint: str = "",
) -> SpecError:
    """`exc`, raised by (or about) the researcher's code, as a SpecError: `field:
    file:line: Type: text`. The line is the deepest frame in the code, else where the first
    of `at` (functions, classes) that is in the code is defined, else the code folder."""
    place = where(exc, code) or _site(at, code)
    text = " ".join(str(exc).strip().splitlines()[:1])[:MAX_TEXT]
    detail = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return _error(field, _at(place, f"{detail}{f' ({hint})' if hint else ''}"))


def problem_at(field: str, at: tuple[object, ...], code: StagedCode | None, text: str) -> SpecError:
    """A problem found by checking, not raised: named where the first of `at` in the code
    is defined."""
    return _error(field, _at(_site(at, code), text))


def where(exc: BaseException, code: StagedCode | None) -> str | None:
    """`file:line` of the deepest frame of `exc` (or what caused it) in the code."""
    if code is None:
        return None
    for err in _chain(exc):
        if isinstance(err, SyntaxError) and err.filename:
            shown = code.display(err.filename)
            if shown is not None:
                return f"{shown}:{err.lineno}"
        for frame in reversed(traceback.extract_tb(err.__traceback__)):
            shown = code.display(frame.filename)
            if shown is not None:
                return f"{shown}:{frame.lineno}"
    return None


def defined_at(obj: object, code: StagedCode | None) -> str | None:
    """`file:line` where a function, class or method of the code is defined."""
    if code is None:
        return None
    try:
        target = inspect.unwrap(obj)  # type: ignore[arg-type]
        source = inspect.getsourcefile(target)
        line = inspect.getsourcelines(target)[1]
    except (TypeError, OSError):
        return None
    shown = code.display(source) if source else None
    return f"{shown}:{max(line, 1)}" if shown else None


def _site(at: tuple[object, ...], code: StagedCode | None) -> str | None:
    found = (defined_at(obj, code) for obj in at)
    return next((f for f in found if f), code.spec.path if code is not None else None)


def _at(place: str | None, text: str) -> str:
    return f"{place}: {text}" if place else text


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _error(field: str, text: str) -> SpecError:
    return SpecError("the model code failed", [Secrets().redact(f"{field}: {text}")])
