"""The opcode walker under the DEAP pickle reader: a bounded stack machine that runs nothing.

:class:`PickleMachine` reads a pickle opcode by opcode with its own stack, memo and marks. It
makes only inert values (:class:`PickledStr` views of the file, tuples, lists and dicts of
them, small integers, booleans, None) and never imports or calls anything the file names:
``GLOBAL``, ``REDUCE`` and ``BUILD`` are left to a subclass (:meth:`PickleMachine.global_`,
:meth:`~PickleMachine.reduce`, :meth:`~PickleMachine.build`), which decides what the few
callables it admits stand for.

Containers nest at most :data:`MAX_DEPTH` deep, the memo holds at most :data:`MAX_MEMO`
entries, the stack at most :data:`MAX_STACK` items, a dict at most :data:`MAX_KEYS` keys and a
pickle at most :data:`MAX_OPCODES` opcodes, so a crafted file can neither hang the walker nor
make it grow without bound.
"""

from __future__ import annotations

import pickletools
import struct
from dataclasses import dataclass, field
from typing import Any, ClassVar

MAX_DEPTH = 8  # a DEAP dict nests 5 deep: dict > array state > dtype > dtype state > value
MAX_MEMO = 4096
MAX_STACK = 4096
MAX_OPCODES = 100_000
MAX_KEYS = 64
MAX_NAME_BYTES = 256  # keys, module and attribute names, dtype names, codec names


class PickleRefused(ValueError):
    """The pickle is corrupt or is not a dict of numeric arrays; ``str(err)`` says why in one line."""


def corrupt(detail: str) -> PickleRefused:
    return PickleRefused(f"truncated or corrupt pickle ({detail})")


@dataclass(eq=False)
class PickledStr:
    """A string in the pickle, still a view of the file; ``kind``: "bytes", "bytearray" or "text" (UTF-8)."""

    view: memoryview
    kind: str
    offset: int = 0  # where ``view`` starts in the pickle
    # Set on protocol 2's ``_codecs.encode(text, 'latin1')``: ``view`` is the UTF-8 text in the
    # file, ``latin1_bytes`` the length of the bytes it encodes to.
    latin1_bytes: int | None = None
    depth: int = 0

    @property
    def type_name(self) -> str:
        return "str" if self.kind == "text" else self.kind

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
class PickledGlobal:
    """A global the subclass admitted, by the role it plays (e.g. "dtype")."""

    type_name: ClassVar[str] = "function"
    role: str
    depth: int = 0


@dataclass(eq=False)
class PickledTuple:
    type_name: ClassVar[str] = "tuple"
    items: tuple
    depth: int


@dataclass(eq=False)
class PickledList:
    type_name: ClassVar[str] = "list"
    items: list = field(default_factory=list)
    depth: int = 1


@dataclass(eq=False)
class PickledDict:
    type_name: ClassVar[str] = "dict"
    items: dict = field(default_factory=dict)
    depth: int = 1


def type_name(value: Any) -> str:
    """The name of the Python type a pickled value stands for, for messages ("str", "dict", ...)."""
    return getattr(value, "type_name", type(value).__name__)


def depth_of(value: Any) -> int:
    return getattr(value, "depth", 0)


def _deepen(container: PickledList | PickledDict, item: Any) -> None:
    """Account for ``item`` now held in ``container``, refusing nesting beyond :data:`MAX_DEPTH`."""
    container.depth = max(container.depth, 1 + depth_of(item))
    if container.depth > MAX_DEPTH:
        raise PickleRefused(f"refused: containers nested more than {MAX_DEPTH} deep")


class PickleMachine:
    """The stack machine; :meth:`run` returns the one value the pickle leaves on the stack.

    A subclass gives ``GLOBAL``, ``REDUCE`` and ``BUILD`` their meaning: this class refuses
    every global.
    """

    def __init__(self, buffer: memoryview):
        self.data = buffer
        self.pos = 0
        self.stack: list = []
        self.marks: list[int] = []
        self.memo: dict[int, Any] = {}

    # -- reading the stream ------------------------------------------------------------------
    def take(self, n: int, what: str) -> memoryview:
        if n < 0:
            raise corrupt(f"{what} at byte {self.pos} has a negative length")
        end = self.pos + n
        if end > len(self.data):
            raise corrupt(
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
            raise corrupt(f"{what} at byte {self.pos} has no end of line")
        text = bytes(self.take(end + 1, what)[:-1])
        try:
            return text.decode("ascii")
        except UnicodeDecodeError:
            raise corrupt(f"{what} at byte {self.pos} is not ASCII") from None

    # -- the stack ---------------------------------------------------------------------------
    def push(self, value: Any) -> None:
        if len(self.stack) >= MAX_STACK:
            raise PickleRefused(f"refused: more than {MAX_STACK} items on the pickle stack")
        if depth_of(value) > MAX_DEPTH:
            raise PickleRefused(
                f"refused: containers nested more than {MAX_DEPTH} deep at byte {self.pos}; "
                "a DEAP .dat file holds a dict of arrays"
            )
        self.stack.append(value)

    def pop(self) -> Any:
        if not self.stack or (self.marks and len(self.stack) == self.marks[-1]):
            raise corrupt(f"stack underflow at byte {self.pos}")
        return self.stack.pop()

    def pop_mark(self) -> list:
        if not self.marks:
            raise corrupt(f"no MARK before byte {self.pos}")
        start = self.marks.pop()
        items = self.stack[start:]
        del self.stack[start:]
        return items

    def top(self) -> Any:
        if not self.stack or (self.marks and len(self.stack) == self.marks[-1]):
            raise corrupt(f"stack underflow at byte {self.pos}")
        return self.stack[-1]

    # -- containers ----------------------------------------------------------------------------
    def tuple_of(self, items: list | tuple) -> PickledTuple:
        return PickledTuple(tuple(items), 1 + max((depth_of(item) for item in items), default=0))

    def set_items(self, target: Any, pairs: list) -> None:
        if not isinstance(target, PickledDict):
            raise corrupt(f"SETITEM on a {type_name(target)} at byte {self.pos}")
        if len(pairs) % 2:
            raise corrupt(f"odd number of items for SETITEMS at byte {self.pos}")
        for key, value in zip(pairs[::2], pairs[1::2], strict=True):
            name = key.small() if isinstance(key, PickledStr) else None
            if name is None:
                raise PickleRefused(
                    f"refused a dict key that is a {type_name(key)}: a DEAP .dat file has short string keys"
                )
            if len(target.items) >= MAX_KEYS and name not in target.items:
                raise PickleRefused(f"refused: a dict with more than {MAX_KEYS} keys")
            target.items[name] = value
            _deepen(target, value)

    def append(self, target: Any, items: list) -> None:
        if not isinstance(target, PickledList):
            raise corrupt(f"APPEND to a {type_name(target)} at byte {self.pos}")
        if len(target.items) + len(items) > MAX_STACK:
            raise PickleRefused(f"refused: a list of more than {MAX_STACK} items")
        for item in items:
            target.items.append(item)
            _deepen(target, item)

    # -- what a subclass admits --------------------------------------------------------------
    def global_(self, module: str, name: str) -> PickledGlobal:
        raise PickleRefused(f"refused to load global {module}.{name}")

    def reduce(self, function: Any, args: Any) -> Any:
        raise PickleRefused(f"refused to call a {type_name(function)} at byte {self.pos}")

    def build(self, target: Any, state: Any) -> None:
        raise PickleRefused(f"refused to set the state of a {type_name(target)}")

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> Any:
        data = self.data
        if len(data) == 0:
            raise corrupt("empty file")
        for _ in range(MAX_OPCODES):
            if self.pos >= len(data):
                raise corrupt(f"ends at byte {self.pos} without STOP")
            at = self.pos
            code = data[at]
            self.pos += 1
            handler = _OPCODES.get(code)
            if handler is None:
                raise _refused_opcode(code, at)
            if handler(self) is _STOP:
                if self.marks or len(self.stack) != 1:
                    raise corrupt(f"STOP at byte {at} with an unbalanced stack")
                return self.stack.pop()
        raise PickleRefused(f"refused: more than {MAX_OPCODES} opcodes; a DEAP .dat file has a few hundred")


_STOP = object()
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
    return corrupt(f"unknown opcode 0x{code:02x} at byte {at}")


def _string(length_format: str, kind: str, what: str):
    def read(machine: PickleMachine) -> None:
        n = machine.unpack(length_format, what)
        offset = machine.pos
        machine.push(PickledStr(machine.take(n, what), kind, offset))

    return read


def _integer(fmt: str, what: str):
    def read(machine: PickleMachine) -> None:
        machine.push(machine.unpack(fmt, what))

    return read


def _long1(machine: PickleMachine) -> None:
    n = machine.unpack("<B", "LONG1")
    if n > 8:
        raise PickleRefused(f"refused a {n}-byte integer at byte {machine.pos}")
    machine.push(int.from_bytes(machine.take(n, "LONG1"), "little", signed=True))


def _proto(machine: PickleMachine) -> None:
    version = machine.unpack("<B", "PROTO")
    if version > 5:
        raise corrupt(f"pickle protocol {version} is newer than 5")


def _frame(machine: PickleMachine) -> None:
    length = machine.unpack("<Q", "FRAME")
    if length > len(machine.data) - machine.pos:
        raise corrupt(f"FRAME at byte {machine.pos} claims {length} bytes beyond the file")


def _mark(machine: PickleMachine) -> None:
    if len(machine.marks) >= MAX_DEPTH * 4:
        raise PickleRefused(f"refused: more than {MAX_DEPTH * 4} open MARKs")
    machine.marks.append(len(machine.stack))


def _tuple_n(n: int):
    def read(machine: PickleMachine) -> None:
        items = [machine.pop() for _ in range(n)][::-1]
        machine.push(machine.tuple_of(items))

    return read


def _put(fmt: str | None):
    def read(machine: PickleMachine) -> None:
        index = machine.unpack(fmt, "PUT") if fmt else len(machine.memo)
        if len(machine.memo) >= MAX_MEMO and index not in machine.memo:
            raise PickleRefused(f"refused: more than {MAX_MEMO} memo entries")
        machine.memo[index] = machine.top()

    return read


def _get(fmt: str):
    def read(machine: PickleMachine) -> None:
        index = machine.unpack(fmt, "GET")
        if index not in machine.memo:
            raise corrupt(f"memo entry {index} read before it is written, at byte {machine.pos}")
        machine.push(machine.memo[index])

    return read


def _global(machine: PickleMachine) -> None:
    module = machine.line("GLOBAL")
    name = machine.line("GLOBAL")
    machine.push(machine.global_(module, name))


def _stack_global(machine: PickleMachine) -> None:
    name, module = machine.pop(), machine.pop()
    names = [v.small() if isinstance(v, PickledStr) and v.kind == "text" else None for v in (module, name)]
    if None in names:
        raise corrupt(f"STACK_GLOBAL without two names at byte {machine.pos}")
    machine.push(machine.global_(names[0], names[1]))


def _reduce(machine: PickleMachine) -> None:
    args = machine.pop()
    function = machine.pop()
    machine.push(machine.reduce(function, args))


def _build(machine: PickleMachine) -> None:
    state = machine.pop()
    machine.build(machine.top(), state)


def _setitem(machine: PickleMachine) -> None:
    value = machine.pop()
    key = machine.pop()
    machine.set_items(machine.top(), [key, value])


def _setitems(machine: PickleMachine) -> None:
    pairs = machine.pop_mark()
    machine.set_items(machine.top(), pairs)


def _dict(machine: PickleMachine) -> None:
    pairs = machine.pop_mark()
    target = PickledDict()
    machine.set_items(target, pairs)
    machine.push(target)


def _list(machine: PickleMachine) -> None:
    items = machine.pop_mark()
    target = PickledList()
    machine.append(target, items)
    machine.push(target)


def _appends(machine: PickleMachine) -> None:
    items = machine.pop_mark()
    machine.append(machine.top(), items)


def _append(machine: PickleMachine) -> None:
    item = machine.pop()
    machine.append(machine.top(), [item])


def _dup(machine: PickleMachine) -> None:
    machine.push(machine.top())


def _pop_mark(machine: PickleMachine) -> None:
    machine.pop_mark()


def _pop(machine: PickleMachine) -> None:
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
        ")": lambda machine: machine.push(PickledTuple((), 1)),
        "t": lambda machine: machine.push(machine.tuple_of(machine.pop_mark())),
        "\x85": _tuple_n(1),
        "\x86": _tuple_n(2),
        "\x87": _tuple_n(3),
        "]": lambda machine: machine.push(PickledList()),
        "l": _list,
        "a": _append,
        "e": _appends,
        "}": lambda machine: machine.push(PickledDict()),
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
