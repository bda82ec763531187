"""A reader for pickles of a dict of numeric arrays that never runs the pickle.

:func:`describe_array_dict` reads a pickle opcode by opcode with its own small stack machine:
it never calls ``pickle.load`` and never hands anything from the file to a numpy or Python
constructor. It admits only the shapes a DEAP-like file takes: a dict of a few string keys to
numeric arrays, each rebuilt from one byte string of a plain numeric dtype through

- ``numpy.core.multiarray._reconstruct`` + ``BUILD`` (Python 2 cPickle, Python 3 protocols 2-4),
  the bytes written verbatim or, at Python 3 protocol 2, as ``_codecs.encode(str, 'latin1')``;
- ``numpy._core.numeric._frombuffer`` on in-band bytes (protocol 5);

and says where each array's bytes lie (:class:`ArraySpec`). :func:`build_arrays` then makes the
arrays with :func:`numpy.frombuffer`, checking every offset and size again, so the two halves
can run in different processes (the first in a bounded child, see :mod:`pipeline.isolation`).

Containers nest at most :data:`MAX_DEPTH` deep, the memo holds at most :data:`MAX_MEMO`
entries, the stack at most :data:`MAX_STACK` items, and each array's shape times its item size
must equal the length of its bytes, so a crafted file cannot crash the process, hang it or make
it allocate more than the file's own size. Array bytes are not copied: the arrays are views of
the buffer passed in (except for protocol 2's text-encoded bytes, which are decoded once).
"""

from __future__ import annotations

import pickletools
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MAX_DEPTH = 8  # a DEAP dict nests 5 deep: dict > array state > dtype > dtype state > value
MAX_MEMO = 4096
MAX_STACK = 4096
MAX_OPCODES = 100_000
MAX_KEYS = 64
MAX_NAME_BYTES = 256  # keys, module and attribute names, dtype names, codec names
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


class PickleRefused(ValueError):
    """The pickle is corrupt or is not a dict of numeric arrays; ``str(err)`` says why in one line."""


def _corrupt(detail: str) -> PickleRefused:
    return PickleRefused(f"truncated or corrupt pickle ({detail})")


@dataclass(eq=False)
class _Str:
    """A string in the pickle, still a view of the file; ``kind``: "bytes", "bytearray" or "text" (UTF-8)."""

    view: memoryview
    kind: str
    offset: int = 0  # where ``view`` starts in the pickle
    # Set on protocol 2's ``_codecs.encode(text, 'latin1')``: ``view`` is the UTF-8 text in the
    # file, ``latin1_bytes`` the length of the bytes it encodes to.
    latin1_bytes: int | None = None
    depth: int = 0

    @property
    def n_bytes(self) -> int:
        return len(self.view) if self.latin1_bytes is None else self.latin1_bytes

    def small(self) -> str | None:
        """The string's value when it is short enough to be a name (text decoded, bytes as latin-1)."""
        if len(self.view) > MAX_NAME_BYTES:
            return None
        raw = bytes(self.view)
        if self.kind == "text":
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError:
                return None
        return raw.decode("latin-1")


@dataclass(eq=False)
class _Global:
    role: str
    depth: int = 0


@dataclass(eq=False)
class _Tuple:
    items: tuple
    depth: int


@dataclass(eq=False)
class _List:
    items: list = field(default_factory=list)
    depth: int = 1


@dataclass(eq=False)
class _Dict:
    items: dict = field(default_factory=dict)
    depth: int = 1


@dataclass(eq=False)
class _DType:
    """``numpy.dtype(name, ...)``; ``BUILD`` may then set its byte order."""

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

    spec: ArraySpec | None = None
    depth: int = 1


class _Mark:
    """MARK on the stack."""


_MARK = _Mark()


def _type_name(value: Any) -> str:
    if isinstance(value, _Str):
        return "str" if value.kind == "text" else value.kind
    if isinstance(value, _Tuple | _List | _Dict):
        return type(value).__name__.lstrip("_").lower()
    if isinstance(value, _DType):
        return "dtype"
    if isinstance(value, _Global):
        return "function"
    if isinstance(value, _Array):
        return "ndarray"
    return type(value).__name__


def _depth(value: Any) -> int:
    return getattr(value, "depth", 0)


class _Machine:
    """The stack machine; :meth:`run` returns the dict of arrays the pickle describes."""

    def __init__(self, buffer: memoryview):
        self.data = buffer
        self.pos = 0
        self.stack: list = []
        self.marks: list[int] = []
        self.memo: dict[int, Any] = {}
        # Bytes decoded out of protocol 2's text strings; never more than the file holds.
        self.decoded_bytes = 0

    # -- reading the stream ------------------------------------------------------------------
    def take(self, n: int, what: str) -> memoryview:
        if n < 0:
            raise _corrupt(f"{what} at byte {self.pos} has a negative length")
        end = self.pos + n
        if end > len(self.data):
            raise _corrupt(
                f"{what} at byte {self.pos} claims {n} bytes, only {len(self.data) - self.pos} remain"
            )
        view = self.data[self.pos : end]
        self.pos = end
        return view

    def unpack(self, fmt: str, what: str) -> int:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]

    def line(self, what: str) -> str:
        end = bytes(self.data[self.pos : self.pos + MAX_NAME_BYTES + 1]).find(b"\n")
        if end < 0:
            raise _corrupt(f"{what} at byte {self.pos} has no end of line")
        text = bytes(self.take(end + 1, what)[:-1])
        try:
            return text.decode("ascii")
        except UnicodeDecodeError:
            raise _corrupt(f"{what} at byte {self.pos} is not ASCII") from None

    # -- the stack ---------------------------------------------------------------------------
    def push(self, value: Any) -> None:
        if len(self.stack) >= MAX_STACK:
            raise PickleRefused(f"refused: more than {MAX_STACK} items on the pickle stack")
        if _depth(value) > MAX_DEPTH:
            raise PickleRefused(
                f"refused: containers nested more than {MAX_DEPTH} deep at byte {self.pos}; "
                "a DEAP .dat file holds a dict of arrays"
            )
        self.stack.append(value)

    def pop(self) -> Any:
        if not self.stack or (self.marks and len(self.stack) == self.marks[-1]):
            raise _corrupt(f"stack underflow at byte {self.pos}")
        return self.stack.pop()

    def pop_mark(self) -> list:
        if not self.marks:
            raise _corrupt(f"no MARK before byte {self.pos}")
        start = self.marks.pop()
        items = self.stack[start:]
        del self.stack[start:]
        return items

    def top(self) -> Any:
        if not self.stack or (self.marks and len(self.stack) == self.marks[-1]):
            raise _corrupt(f"stack underflow at byte {self.pos}")
        return self.stack[-1]

    # -- building values ---------------------------------------------------------------------
    def tuple_of(self, items: list | tuple) -> _Tuple:
        return _Tuple(tuple(items), 1 + max((_depth(item) for item in items), default=0))

    def global_(self, module: str, name: str) -> _Global:
        role = _ARRAY_BUILDERS.get((module, name))
        if role is None:
            raise PickleRefused(
                f"refused to load global {module}.{name}: a DEAP .dat file holds only numpy arrays"
            )
        return _Global(role)

    def set_items(self, target: Any, pairs: list) -> None:
        if not isinstance(target, _Dict):
            raise _corrupt(f"SETITEM on a {_type_name(target)} at byte {self.pos}")
        if len(pairs) % 2:
            raise _corrupt(f"odd number of items for SETITEMS at byte {self.pos}")
        for key, value in zip(pairs[::2], pairs[1::2], strict=True):
            name = key.small() if isinstance(key, _Str) else None
            if name is None:
                raise PickleRefused(
                    f"refused a dict key that is a {_type_name(key)}: a DEAP .dat file has short string keys"
                )
            if len(target.items) >= MAX_KEYS and name not in target.items:
                raise PickleRefused(f"refused: a dict with more than {MAX_KEYS} keys")
            target.items[name] = value
            target.depth = max(target.depth, 1 + _depth(value))
            if target.depth > MAX_DEPTH:
                raise PickleRefused(f"refused: containers nested more than {MAX_DEPTH} deep")

    def append(self, target: Any, items: list) -> None:
        if not isinstance(target, _List):
            raise _corrupt(f"APPEND to a {_type_name(target)} at byte {self.pos}")
        if len(target.items) + len(items) > MAX_STACK:
            raise PickleRefused(f"refused: a list of more than {MAX_STACK} items")
        for item in items:
            target.items.append(item)
            target.depth = max(target.depth, 1 + _depth(item))
        if target.depth > MAX_DEPTH:
            raise PickleRefused(f"refused: containers nested more than {MAX_DEPTH} deep")

    def reduce(self, function: Any, args: Any) -> Any:
        if not isinstance(function, _Global):
            raise PickleRefused(f"refused to call a {_type_name(function)} at byte {self.pos}")
        if not isinstance(args, _Tuple):
            raise _corrupt(f"REDUCE arguments are a {_type_name(args)} at byte {self.pos}")
        args = args.items
        if function.role == "dtype":
            return self.make_dtype(args)
        if function.role == "reconstruct":
            if not (
                len(args) == 3
                and isinstance(args[0], _Global)
                and args[0].role == "ndarray"
                and isinstance(args[1], _Tuple)
                and isinstance(args[2], _Str)
            ):
                raise PickleRefused("refused: _reconstruct with arguments other than (ndarray, shape, tag)")
            return _Array()
        if function.role == "encode":
            return self.encode_latin1(args)
        if function.role == "frombuffer":
            return self.frombuffer(args)
        raise PickleRefused(f"refused to call numpy.{function.role}")

    def make_dtype(self, args: tuple) -> _DType:
        name = args[0].small() if args and isinstance(args[0], _Str) else None
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
            raise PickleRefused(f"refused to set the state of a {_type_name(target)}")

    def build_dtype(self, target: _DType, state: Any) -> None:
        items = state.items if isinstance(state, _Tuple) else ()
        byteorder = items[1].small() if len(items) in (8, 9) and isinstance(items[1], _Str) else None
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
        items = state.items if isinstance(state, _Tuple) else ()
        if not (
            len(items) == 5
            and items[0] == 1
            and isinstance(items[2], _DType)
            and isinstance(items[3], bool | int)
        ):
            raise PickleRefused("refused an ndarray state other than (1, shape, dtype, fortran, bytes)")
        if not isinstance(items[4], _Str) or items[4].kind == "text":
            raise PickleRefused(f"an array's data is a {_type_name(items[4])}, expected its bytes")
        order = "F" if items[3] else "C"
        return self.array_from(items[4], items[2].dtype, items[1], order)

    def array_from(self, raw: _Str, dtype: np.dtype, shape: Any, order: str, axes: Any = None) -> ArraySpec:
        dims = shape.items if isinstance(shape, _Tuple) else None
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

    def encode_latin1(self, args: tuple) -> _Str:
        codec = args[1].small() if len(args) == 2 and isinstance(args[1], _Str) else None
        if codec not in ("latin1", "latin-1") or not isinstance(args[0], _Str) or args[0].kind != "text":
            raise PickleRefused("refused: _codecs.encode other than encode(str, 'latin1')")
        self.decoded_bytes += len(args[0].view)
        if self.decoded_bytes > len(self.data):
            raise PickleRefused("refused: the pickle decodes more bytes than the file holds")
        text = args[0]
        return _Str(text.view, "bytes", text.offset, latin1_bytes=len(_latin1(text.view)))

    def frombuffer(self, args: tuple) -> _Array:
        if not 4 <= len(args) <= 5:
            raise PickleRefused(_FROMBUFFER_ARGUMENTS)
        raw, dtype, shape, order = args[:4]
        order = order.small() if isinstance(order, _Str) else None
        axes = None
        if len(args) == 5 and not (order == "K" and args[4] is None):
            ok = isinstance(args[4], _Tuple) and isinstance(shape, _Tuple) and order == "K"
            axes = args[4].items if ok else None
            if axes is None or sorted(a for a in axes if isinstance(a, int)) != list(range(len(shape.items))):
                raise PickleRefused("refused: _frombuffer with an axis order that is not a permutation")
            order = "C"
        if order not in ("C", "F", "K"):
            raise PickleRefused(f"refused: _frombuffer with memory order {order!r}")
        if not isinstance(raw, _Str) or raw.kind == "text" or not isinstance(dtype, _DType):
            raise PickleRefused(_FROMBUFFER_ARGUMENTS)
        return _Array(self.array_from(raw, dtype.dtype, shape, "C" if order == "K" else order, axes))

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> Any:
        data = self.data
        if len(data) == 0:
            raise _corrupt("empty file")
        for _ in range(MAX_OPCODES):
            if self.pos >= len(data):
                raise _corrupt(f"ends at byte {self.pos} without STOP")
            at = self.pos
            code = data[at]
            self.pos += 1
            handler = _OPCODES.get(code)
            if handler is None:
                raise _refused_opcode(code, at)
            if handler(self) is _STOP:
                if self.marks or len(self.stack) != 1:
                    raise _corrupt(f"STOP at byte {at} with an unbalanced stack")
                return self.stack.pop()
        raise PickleRefused(f"refused: more than {MAX_OPCODES} opcodes; a DEAP .dat file has a few hundred")


_STOP = object()
_FROMBUFFER_ARGUMENTS = "refused: _frombuffer with arguments other than (bytes, dtype, shape, order)"
_OPCODE_NAMES = {op.code.encode("latin-1")[0]: op.name for op in pickletools.opcodes}
_REFUSED = {
    ord("P"): "refused a persistent id: a DEAP .dat file holds only numpy arrays",
    ord("Q"): "refused a persistent id: a DEAP .dat file holds only numpy arrays",
    0x97: "refused an out-of-band buffer: a DEAP .dat file holds its arrays' bytes itself",
    0x98: "refused an out-of-band buffer: a DEAP .dat file holds its arrays' bytes itself",
}


def _refused_opcode(code: int, at: int) -> PickleRefused:
    if code in _REFUSED:
        return PickleRefused(_REFUSED[code])
    if code in _OPCODE_NAMES:
        return PickleRefused(
            f"refused opcode {_OPCODE_NAMES[code]} at byte {at}: "
            "a DEAP .dat file holds only a dict of numpy arrays"
        )
    return _corrupt(f"unknown opcode 0x{code:02x} at byte {at}")


def _string(length_format: str, kind: str, what: str):
    def read(machine: _Machine) -> None:
        n = machine.unpack(length_format, what)
        offset = machine.pos
        machine.push(_Str(machine.take(n, what), kind, offset))

    return read


def _integer(fmt: str, what: str):
    def read(machine: _Machine) -> None:
        machine.push(machine.unpack(fmt, what))

    return read


def _long1(machine: _Machine) -> None:
    n = machine.unpack("<B", "LONG1")
    if n > 8:
        raise PickleRefused(f"refused a {n}-byte integer at byte {machine.pos}")
    machine.push(int.from_bytes(machine.take(n, "LONG1"), "little", signed=True))


def _proto(machine: _Machine) -> None:
    version = machine.unpack("<B", "PROTO")
    if version > 5:
        raise _corrupt(f"pickle protocol {version} is newer than 5")


def _frame(machine: _Machine) -> None:
    length = machine.unpack("<Q", "FRAME")
    if length > len(machine.data) - machine.pos:
        raise _corrupt(f"FRAME at byte {machine.pos} claims {length} bytes beyond the file")


def _mark(machine: _Machine) -> None:
    if len(machine.marks) >= MAX_DEPTH * 4:
        raise PickleRefused(f"refused: more than {MAX_DEPTH * 4} open MARKs")
    machine.marks.append(len(machine.stack))


def _tuple_n(n: int):
    def read(machine: _Machine) -> None:
        items = [machine.pop() for _ in range(n)][::-1]
        machine.push(machine.tuple_of(items))

    return read


def _put(fmt: str | None):
    def read(machine: _Machine) -> None:
        index = machine.unpack(fmt, "PUT") if fmt else len(machine.memo)
        if len(machine.memo) >= MAX_MEMO and index not in machine.memo:
            raise PickleRefused(f"refused: more than {MAX_MEMO} memo entries")
        machine.memo[index] = machine.top()

    return read


def _get(fmt: str):
    def read(machine: _Machine) -> None:
        index = machine.unpack(fmt, "GET")
        if index not in machine.memo:
            raise _corrupt(f"memo entry {index} read before it is written, at byte {machine.pos}")
        machine.push(machine.memo[index])

    return read


def _global(machine: _Machine) -> None:
    module = machine.line("GLOBAL")
    name = machine.line("GLOBAL")
    machine.push(machine.global_(module, name))


def _stack_global(machine: _Machine) -> None:
    name, module = machine.pop(), machine.pop()
    names = [v.small() if isinstance(v, _Str) and v.kind == "text" else None for v in (module, name)]
    if None in names:
        raise _corrupt(f"STACK_GLOBAL without two names at byte {machine.pos}")
    machine.push(machine.global_(names[0], names[1]))


def _reduce(machine: _Machine) -> None:
    args = machine.pop()
    function = machine.pop()
    machine.push(machine.reduce(function, args))


def _build(machine: _Machine) -> None:
    state = machine.pop()
    machine.build(machine.top(), state)


def _setitem(machine: _Machine) -> None:
    value = machine.pop()
    key = machine.pop()
    machine.set_items(machine.top(), [key, value])


def _setitems(machine: _Machine) -> None:
    pairs = machine.pop_mark()
    machine.set_items(machine.top(), pairs)


def _dict(machine: _Machine) -> None:
    pairs = machine.pop_mark()
    target = _Dict()
    machine.set_items(target, pairs)
    machine.push(target)


def _list(machine: _Machine) -> None:
    items = machine.pop_mark()
    target = _List()
    machine.append(target, items)
    machine.push(target)


def _appends(machine: _Machine) -> None:
    items = machine.pop_mark()
    machine.append(machine.top(), items)


def _append(machine: _Machine) -> None:
    item = machine.pop()
    machine.append(machine.top(), [item])


def _dup(machine: _Machine) -> None:
    machine.push(machine.top())


def _pop_mark(machine: _Machine) -> None:
    machine.pop_mark()


def _pop(machine: _Machine) -> None:
    if machine.marks and len(machine.stack) == machine.marks[-1]:
        machine.marks.pop()
    else:
        machine.pop()


_OPCODES: dict[int, Any] = {
    ord(code): handler
    for code, handler in {
        "\x80": _proto,
        "\x95": _frame,
        ".": lambda machine: _STOP,
        "(": _mark,
        "0": _pop,
        "1": _pop_mark,
        "2": _dup,
        "N": lambda machine: machine.push(None),
        "\x88": lambda machine: machine.push(True),
        "\x89": lambda machine: machine.push(False),
        "J": _integer("<i", "BININT"),
        "K": _integer("<B", "BININT1"),
        "M": _integer("<H", "BININT2"),
        "\x8a": _long1,
        "T": _string("<i", "bytes", "BINSTRING"),
        "U": _string("<B", "bytes", "SHORT_BINSTRING"),
        "B": _string("<I", "bytes", "BINBYTES"),
        "C": _string("<B", "bytes", "SHORT_BINBYTES"),
        "\x8e": _string("<Q", "bytes", "BINBYTES8"),
        "\x96": _string("<Q", "bytearray", "BYTEARRAY8"),
        "X": _string("<I", "text", "BINUNICODE"),
        "\x8c": _string("<B", "text", "SHORT_BINUNICODE"),
        "\x8d": _string("<Q", "text", "BINUNICODE8"),
        ")": lambda machine: machine.push(_Tuple((), 1)),
        "t": lambda machine: machine.push(machine.tuple_of(machine.pop_mark())),
        "\x85": _tuple_n(1),
        "\x86": _tuple_n(2),
        "\x87": _tuple_n(3),
        "]": lambda machine: machine.push(_List()),
        "l": _list,
        "a": _append,
        "e": _appends,
        "}": lambda machine: machine.push(_Dict()),
        "d": _dict,
        "s": _setitem,
        "u": _setitems,
        "c": _global,
        "\x93": _stack_global,
        "R": _reduce,
        "b": _build,
        "q": _put("<B"),
        "r": _put("<I"),
        "\x94": _put(None),
        "h": _get("<B"),
        "j": _get("<I"),
    }.items()
}


def _latin1(text: memoryview) -> bytes:
    """The bytes protocol 2 wrote as ``text`` (UTF-8 in the file) for ``_codecs.encode(text, 'latin1')``."""
    try:
        return bytes(text).decode("utf-8", "surrogatepass").encode("latin-1")
    except (UnicodeDecodeError, UnicodeEncodeError) as err:
        raise PickleRefused(f"an array's data is not latin-1 text ({err.reason})") from None


def describe_array_dict(buffer: bytes | memoryview) -> dict[str, ArraySpec]:
    """Where each array of the pickled dict lies in ``buffer``, found without running the pickle.

    This is the part that reads the untrusted opcodes; it allocates little and returns plain
    data, so it can run in a bounded child process (:func:`pipeline.isolation.run_isolated`).

    Raises
    ------
    PickleRefused
        One line saying what is wrong: truncated or corrupt, a global other than numpy's array
        builders, a shape other than a dict of arrays, or a bound exceeded.
    """
    result = _Machine(memoryview(buffer).cast("B")).run()
    if not isinstance(result, _Dict):
        raise PickleRefused(f"holds a {_type_name(result)}, expected a dict with 'data' and 'labels'")
    specs = {}
    for key, value in result.items.items():
        if isinstance(value, _Array) and value.spec is None:
            raise PickleRefused(f"'{key}' is an array the file never gives the bytes of")
        if not isinstance(value, _Array):
            raise PickleRefused(f"'{key}' is a {_type_name(value)}, expected a numpy array")
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
