"""The pickle opcodes the model reads, each named as the stdlib :mod:`pickle` module names it
(an ``int``: the byte ``data[pos]`` yields), and the sets of them torch's weights-only loader and
the library's own loader implement.

>>> opcode_name(DUP), opcode_name(GLOBAL)
('DUP', "b'c'")
>>> BINGET in TORCH_OPCODES, FRAME in TORCH_OPCODES, FRAME in LIBRARY_OPCODES
(True, False, True)
"""

from __future__ import annotations

import pickle

MARK = pickle.MARK[0]
EMPTY_TUPLE = pickle.EMPTY_TUPLE[0]
STOP = pickle.STOP[0]
POP = pickle.POP[0]
POP_MARK = pickle.POP_MARK[0]
DUP = pickle.DUP[0]
BINBYTES = pickle.BINBYTES[0]
SHORT_BINBYTES = pickle.SHORT_BINBYTES[0]
FLOAT = pickle.FLOAT[0]
BINFLOAT = pickle.BINFLOAT[0]
INT = pickle.INT[0]
BININT = pickle.BININT[0]
BININT1 = pickle.BININT1[0]
LONG = pickle.LONG[0]
BININT2 = pickle.BININT2[0]
NONE = pickle.NONE[0]
PERSID = pickle.PERSID[0]
BINPERSID = pickle.BINPERSID[0]
REDUCE = pickle.REDUCE[0]
STRING = pickle.STRING[0]
BINSTRING = pickle.BINSTRING[0]
SHORT_BINSTRING = pickle.SHORT_BINSTRING[0]
UNICODE = pickle.UNICODE[0]
BINUNICODE = pickle.BINUNICODE[0]
EMPTY_LIST = pickle.EMPTY_LIST[0]
APPEND = pickle.APPEND[0]
BUILD = pickle.BUILD[0]
GLOBAL = pickle.GLOBAL[0]
DICT = pickle.DICT[0]
APPENDS = pickle.APPENDS[0]
GET = pickle.GET[0]
BINGET = pickle.BINGET[0]
INST = pickle.INST[0]
LONG_BINGET = pickle.LONG_BINGET[0]
LIST = pickle.LIST[0]
OBJ = pickle.OBJ[0]
PUT = pickle.PUT[0]
BINPUT = pickle.BINPUT[0]
LONG_BINPUT = pickle.LONG_BINPUT[0]
SETITEM = pickle.SETITEM[0]
TUPLE = pickle.TUPLE[0]
SETITEMS = pickle.SETITEMS[0]
EMPTY_DICT = pickle.EMPTY_DICT[0]
PROTO = pickle.PROTO[0]
NEWOBJ = pickle.NEWOBJ[0]
EXT1 = pickle.EXT1[0]
EXT2 = pickle.EXT2[0]
EXT4 = pickle.EXT4[0]
TUPLE1 = pickle.TUPLE1[0]
TUPLE2 = pickle.TUPLE2[0]
TUPLE3 = pickle.TUPLE3[0]
NEWTRUE = pickle.NEWTRUE[0]
NEWFALSE = pickle.NEWFALSE[0]
LONG1 = pickle.LONG1[0]
LONG4 = pickle.LONG4[0]
SHORT_BINUNICODE = pickle.SHORT_BINUNICODE[0]
BINUNICODE8 = pickle.BINUNICODE8[0]
BINBYTES8 = pickle.BINBYTES8[0]
EMPTY_SET = pickle.EMPTY_SET[0]
ADDITEMS = pickle.ADDITEMS[0]
FROZENSET = pickle.FROZENSET[0]
NEWOBJ_EX = pickle.NEWOBJ_EX[0]
STACK_GLOBAL = pickle.STACK_GLOBAL[0]
MEMOIZE = pickle.MEMOIZE[0]
FRAME = pickle.FRAME[0]
BYTEARRAY8 = pickle.BYTEARRAY8[0]
NEXT_BUFFER = pickle.NEXT_BUFFER[0]
READONLY_BUFFER = pickle.READONLY_BUFFER[0]

#: the opcodes torch's weights-only unpickler implements (torch 2.6 - 2.13); any other one makes
#: torch.load(weights_only=True) fail with "Unsupported operand"
TORCH_OPCODES = frozenset({
    GLOBAL, REDUCE, BUILD, NEWOBJ, APPEND, APPENDS, EMPTY_DICT, SETITEM, SETITEMS, MARK, TUPLE,
    TUPLE1, TUPLE2, TUPLE3, NONE, NEWTRUE, NEWFALSE, EMPTY_TUPLE, EMPTY_LIST, EMPTY_SET, BININT,
    BININT1, BININT2, BINFLOAT, BINUNICODE, SHORT_BINSTRING, BINPERSID, BINGET, LONG_BINGET,
    BINPUT, LONG_BINPUT, LONG1, PROTO, STOP,
})
#: opcodes of pickle protocols 3 to 5 that encode what torch's opcodes encode another way:
#: FRAME, MEMOIZE, the short and 8-byte string headers, bytes and bytearrays written as such
#: (protocol 2 writes them as _codecs.encode / bytearray calls, which torch allows), a global
#: named by two strings (STACK_GLOBAL) and a set filled in place (ADDITEMS). torch's weights-only
#: unpickler implements none of them; in a pickle that *declares* protocol 3, 4 or 5 the
#: library's own loader reads them (see :func:`~.prescan.library_protocol`)
LIBRARY_OPCODES = frozenset({
    FRAME, MEMOIZE, SHORT_BINUNICODE, BINUNICODE8, STACK_GLOBAL, BINBYTES, SHORT_BINBYTES,
    BINBYTES8, BYTEARRAY8, ADDITEMS,
})

#: the opcodes problems name by name (the others by their byte, as the C unpickler does)
_NAMED = (
    "POP", "POP_MARK", "DUP", "FLOAT", "INT", "LONG", "PERSID", "STRING", "BINSTRING", "UNICODE",
    "BINBYTES", "SHORT_BINBYTES", "DICT", "GET", "INST", "LIST", "OBJ", "PUT", "EXT1", "EXT2",
    "EXT4", "LONG4", "SHORT_BINUNICODE", "BINUNICODE8", "BINBYTES8", "ADDITEMS", "FROZENSET",
    "NEWOBJ_EX", "STACK_GLOBAL", "MEMOIZE", "FRAME", "BYTEARRAY8", "NEXT_BUFFER",
    "READONLY_BUFFER", "NEWOBJ", "APPEND", "APPENDS", "SETITEM", "SETITEMS", "BUILD",
)
_NAMES = {getattr(pickle, name)[0]: name for name in _NAMED}


def opcode_name(op: int) -> str:
    """How a problem names opcode ``op``: its pickle name, or its byte for the common ones."""
    return _NAMES.get(op, f"{bytes([op])!r}")
