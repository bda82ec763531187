"""A reader for pickles of a dict of numeric arrays that never runs the pickle.

:func:`describe_array_dict` reads a pickle opcode by opcode with its own small stack machine
(:mod:`pipeline.sources.pickle_machine`, taught here what numpy's array builders mean): it
never calls ``pickle.load`` and never hands anything from the file to a numpy or Python
constructor. It admits only the shapes a DEAP-like file takes: a dict of a few string keys to
numeric arrays, each rebuilt from one byte string of a plain numeric dtype through

- ``numpy.core.multiarray._reconstruct`` + ``BUILD`` (Python 2 cPickle, Python 3 protocols 2-4),
  the bytes written verbatim or, at Python 3 protocol 2, as ``_codecs.encode(str, 'latin1')``;
- ``numpy._core.numeric._frombuffer`` on in-band bytes (protocol 5);

and says where each array's bytes lie (:class:`ArraySpec`). :func:`build_arrays` then makes the
arrays with :func:`numpy.frombuffer`, checking every offset and size again, so the two halves
can run in different processes (the first in a bounded child, see :mod:`pipeline.sources.isolation`).

The machine bounds nesting, memo, stack and opcode count, and each array's shape times its item
size must equal the length of its bytes, so a crafted file cannot crash the process, hang it or make
it allocate more than the file's own size. Array bytes are not copied: the arrays are views of
the buffer passed in (except for protocol 2's text-encoded bytes, which are decoded once).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from pipeline.sources.pickle_machine import (
    PickledDict,
    PickledGlobal,
    PickledStr,
    PickledTuple,
    PickleMachine,
    PickleRefused,
    corrupt,
    type_name,
)

MAX_NDIM = 32
# Plain numeric dtypes an array may have (numpy's two-character names).
NUMERIC_DTYPES = frozenset(f"{kind}{size}" for kind in "iu" for size in (1, 2, 4, 8)) | {"f2", "f4", "f8"}

_ARRAY_BUILDERS: dict[tuple[str, str], str] = {
    ("numpy.core.multiarray", "_reconstruct"): "reconstruct",
    ("numpy._core.multiarray", "_reconstruct"): "reconstruct",
    ("numpy.core.numeric", "_frombuffer"): "frombuffer",
    ("numpy._core.numeric", "_frombuffer"): "frombuffer",
    ("numpy", "ndarray"): "ndarray",
    ("numpy", "dtype"): "dtype",
    ("_codecs", "encode"): "encode",
}


_FROMBUFFER_ARGUMENTS = "refused: _frombuffer with arguments other than (bytes, dtype, shape, order)"


@dataclass(eq=False)
class _DType:
    """``numpy.dtype(name, ...)``; ``BUILD`` may then set its byte order."""

    type_name: ClassVar[str] = "dtype"
    dtype: np.dtype
    depth: int = 1


@dataclass(frozen=True)
class ArraySpec:
    """Where an array's bytes lie in the pickle and how to view them; checked when built."""

    dtype: str  # numpy's dtype string with byte order, e.g. "<f8"
    shape: tuple[int, ...]
    order: str  # "C" or "F"
    axes: tuple[int, ...] | None  # a transpose applied after reshaping (protocol 5's order "K")
    offset: int
    length: int  # bytes in the pickle: the array's bytes, or the UTF-8 text encoding them
    latin1_text: bool = False  # protocol 2: the bytes are ``text.encode('latin-1')``

    def to_json(self) -> list:
        return [self.dtype, list(self.shape), self.order, self.axes and list(self.axes),
                self.offset, self.length, self.latin1_text]  # fmt: skip

    @classmethod
    def from_json(cls, values: list) -> ArraySpec:
        dtype, shape, order, axes, offset, length, latin1_text = values
        return cls(dtype, tuple(shape), order, axes and tuple(axes), offset, length, latin1_text)


@dataclass(eq=False)
class _Array:
    """An array: pending its ``BUILD`` state after ``_reconstruct``, or done (``spec`` set)."""

    type_name: ClassVar[str] = "ndarray"
    spec: ArraySpec | None = None
    depth: int = 1


class _ArrayMachine(PickleMachine):
    """The stack machine, admitting numpy's array builders; :meth:`run` returns the dict of arrays."""

    def __init__(self, buffer: memoryview):
        super().__init__(buffer)
        # Bytes decoded out of protocol 2's text strings; never more than the file holds.
        self.decoded_bytes = 0

    def global_(self, module: str, name: str) -> PickledGlobal:
        role = _ARRAY_BUILDERS.get((module, name))
        if role is None:
            raise PickleRefused(
                f"refused to load global {module}.{name}: a DEAP .dat file holds only numpy arrays"
            )
        return PickledGlobal(role)

    def reduce(self, function: Any, args: Any) -> Any:
        if not isinstance(function, PickledGlobal):
            raise PickleRefused(f"refused to call a {type_name(function)} at byte {self.pos}")
        if not isinstance(args, PickledTuple):
            raise corrupt(f"REDUCE arguments are a {type_name(args)} at byte {self.pos}")
        args = args.items
        if function.role == "dtype":
            return self.make_dtype(args)
        if function.role == "reconstruct":
            if not (
                len(args) == 3
                and isinstance(args[0], PickledGlobal)
                and args[0].role == "ndarray"
                and isinstance(args[1], PickledTuple)
                and isinstance(args[2], PickledStr)
            ):
                raise PickleRefused("refused: _reconstruct with arguments other than (ndarray, shape, tag)")
            return _Array()
        if function.role == "encode":
            return self.encode_latin1(args)
        if function.role == "frombuffer":
            return self.frombuffer(args)
        raise PickleRefused(f"refused to call numpy.{function.role}")

    def make_dtype(self, args: tuple) -> _DType:
        name = args[0].small() if args and isinstance(args[0], PickledStr) else None
        if name is None or not 1 <= len(args) <= 3 or not all(isinstance(a, bool | int) for a in args[1:]):
            raise PickleRefused("refused: numpy.dtype called with arguments other than (name, align, copy)")
        if name not in NUMERIC_DTYPES:
            shown = "object" if name.startswith("O") else repr(name)
            raise PickleRefused(f"an array has dtype {shown}, expected a real numeric array")
        return _DType(np.dtype(name))

    def build(self, target: Any, state: Any) -> None:
        if isinstance(target, _DType):
            self.build_dtype(target, state)
        elif isinstance(target, _Array) and target.spec is None:
            target.spec = self.build_array(state)
        else:
            raise PickleRefused(f"refused to set the state of a {type_name(target)}")

    def build_dtype(self, target: _DType, state: Any) -> None:
        items = state.items if isinstance(state, PickledTuple) else ()
        byteorder = items[1].small() if len(items) in (8, 9) and isinstance(items[1], PickledStr) else None
        if (
            byteorder not in ("<", ">", "=", "|")
            or not isinstance(items[0], int)
            or any(item is not None for item in items[2:5])
            or not all(isinstance(item, int) for item in items[5:8])
            or (len(items) == 9 and items[8] is not None)
        ):
            raise PickleRefused("refused a dtype state other than a plain numeric one (byte order only)")
        target.dtype = target.dtype.newbyteorder(byteorder)

    def build_array(self, state: Any) -> ArraySpec:
        items = state.items if isinstance(state, PickledTuple) else ()
        if not (
            len(items) == 5
            and items[0] == 1
            and isinstance(items[2], _DType)
            and isinstance(items[3], bool | int)
        ):
            raise PickleRefused("refused an ndarray state other than (1, shape, dtype, fortran, bytes)")
        if not isinstance(items[4], PickledStr) or items[4].kind == "text":
            raise PickleRefused(f"an array's data is a {type_name(items[4])}, expected its bytes")
        order = "F" if items[3] else "C"
        return self.array_from(items[4], items[2].dtype, items[1], order)

    def array_from(
        self, raw: PickledStr, dtype: np.dtype, shape: Any, order: str, axes: Any = None
    ) -> ArraySpec:
        dims = shape.items if isinstance(shape, PickledTuple) else None
        if (
            dims is None
            or len(dims) > MAX_NDIM
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in dims)
        ):
            raise PickleRefused("refused an array shape that is not a tuple of non-negative integers")
        count = 1
        for size in dims:
            count *= size
        if count * dtype.itemsize != raw.n_bytes:
            raise PickleRefused(
                f"an array of shape {tuple(dims)} and dtype {dtype} needs {count * dtype.itemsize} bytes, "
                f"its data holds {raw.n_bytes}"
            )
        return ArraySpec(
            dtype.str, tuple(dims), order, axes and tuple(axes), raw.offset, len(raw.view),
            raw.latin1_bytes is not None,
        )  # fmt: skip

    def encode_latin1(self, args: tuple) -> PickledStr:
        codec = args[1].small() if len(args) == 2 and isinstance(args[1], PickledStr) else None
        if (
            codec not in ("latin1", "latin-1")
            or not isinstance(args[0], PickledStr)
            or args[0].kind != "text"
        ):
            raise PickleRefused("refused: _codecs.encode other than encode(str, 'latin1')")
        self.decoded_bytes += len(args[0].view)
        if self.decoded_bytes > len(self.data):
            raise PickleRefused("refused: the pickle decodes more bytes than the file holds")
        text = args[0]
        return PickledStr(text.view, "bytes", text.offset, latin1_bytes=len(_latin1(text.view)))

    def frombuffer(self, args: tuple) -> _Array:
        if not 4 <= len(args) <= 5:
            raise PickleRefused(_FROMBUFFER_ARGUMENTS)
        raw, dtype, shape, order = args[:4]
        order = order.small() if isinstance(order, PickledStr) else None
        axes = None
        if len(args) == 5 and not (order == "K" and args[4] is None):
            ok = isinstance(args[4], PickledTuple) and isinstance(shape, PickledTuple) and order == "K"
            axes = args[4].items if ok else None
            if axes is None or sorted(a for a in axes if isinstance(a, int)) != list(range(len(shape.items))):
                raise PickleRefused("refused: _frombuffer with an axis order that is not a permutation")
            order = "C"
        if order not in ("C", "F", "K"):
            raise PickleRefused(f"refused: _frombuffer with memory order {order!r}")
        if not isinstance(raw, PickledStr) or raw.kind == "text" or not isinstance(dtype, _DType):
            raise PickleRefused(_FROMBUFFER_ARGUMENTS)
        return _Array(self.array_from(raw, dtype.dtype, shape, "C" if order == "K" else order, axes))


def _latin1(text: memoryview) -> bytes:
    """The bytes protocol 2 wrote as ``text`` (UTF-8 in the file) for ``_codecs.encode(text, 'latin1')``."""
    try:
        return bytes(text).decode("utf-8", "surrogatepass").encode("latin-1")
    except (UnicodeDecodeError, UnicodeEncodeError) as err:
        raise PickleRefused(f"an array's data is not latin-1 text ({err.reason})") from None


def describe_array_dict(buffer: bytes | memoryview) -> dict[str, ArraySpec]:
    """Where each array of the pickled dict lies in ``buffer``, found without running the pickle.

    This is the part that reads the untrusted opcodes; it allocates little and returns plain
    data, so it can run in a bounded child process (:func:`pipeline.sources.isolation.run_isolated`).

    Raises
    ------
    PickleRefused
        One line saying what is wrong: truncated or corrupt, a global other than numpy's array
        builders, a shape other than a dict of arrays, or a bound exceeded.
    """
    result = _ArrayMachine(memoryview(buffer).cast("B")).run()
    if not isinstance(result, PickledDict):
        raise PickleRefused(f"holds a {type_name(result)}, expected a dict with 'data' and 'labels'")
    specs = {}
    for key, value in result.items.items():
        if isinstance(value, _Array) and value.spec is None:
            raise PickleRefused(f"'{key}' is an array the file never gives the bytes of")
        if not isinstance(value, _Array):
            raise PickleRefused(f"'{key}' is a {type_name(value)}, expected a numpy array")
        specs[key] = value.spec
    return specs


def build_arrays(buffer: bytes | memoryview, specs: dict[str, ArraySpec]) -> dict[str, np.ndarray]:
    """The arrays ``specs`` describe, as views of ``buffer`` (every size checked again here)."""
    view = memoryview(buffer).cast("B")
    arrays = {}
    for key, spec in specs.items():
        dtype = np.dtype(spec.dtype)
        if dtype.kind not in "fiu" or spec.offset < 0 or spec.offset + spec.length > len(view):
            raise PickleRefused(f"'{key}' is described outside the file")
        raw = view[spec.offset : spec.offset + spec.length]
        if spec.latin1_text:
            raw = _latin1(raw)
        count = int(np.prod(spec.shape, dtype=object))
        if count * dtype.itemsize != len(raw):
            raise PickleRefused(f"'{key}' needs {count * dtype.itemsize} bytes, its data holds {len(raw)}")
        array = np.frombuffer(raw, dtype=dtype, count=count).reshape(spec.shape, order=spec.order)
        arrays[key] = array.transpose(spec.axes) if spec.axes is not None else array
    return arrays


def load_array_dict(buffer: bytes | memoryview) -> dict[str, np.ndarray]:
    """The dict of numeric arrays pickled in ``buffer``, built without running the pickle.

    Parameters
    ----------
    buffer : bytes or memoryview
        The whole pickle. The arrays returned are views of it (except protocol 2's
        text-encoded bytes, decoded once).

    Returns
    -------
    dict
        String keys (Python 2 byte strings and Python 3 ``bytes`` keys decoded as latin-1) to
        numpy arrays of a dtype in :data:`NUMERIC_DTYPES`.

    Raises
    ------
    PickleRefused
        As :func:`describe_array_dict`.
    """
    return build_arrays(buffer, describe_array_dict(buffer))
