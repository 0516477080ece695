"""The dotted name a pickle's global is looked up by: torch's weights-only loader renames
Python 2 names first; the library's own loader (protocol 3-5) applies torch's module renaming
only. The allow-list (:mod:`.allowlist`) and the pre-scan (:mod:`.prescan`) both use them."""

from __future__ import annotations

#: torch's weights-only unpickler renames Python 2 modules and names before its allow-list
#: lookup (torch._utils.IMPORT_MAPPING / NAME_MAPPING); the entries that can reach an allowed
#: global or a forbidden module's name
_IMPORT_MAPPING = {"__builtin__": "builtins", "copy_reg": "copyreg", "Queue": "queue",
                   "repr": "reprlib", "_abcoll": "collections.abc", "UserDict": "collections",
                   "UserList": "collections", "UserString": "collections", "whichdb": "dbm",
                   "StringIO": "io", "cStringIO": "io"}
_NAME_MAPPING = {("__builtin__", "reduce"): ("functools", "reduce"),
                 ("__builtin__", "intern"): ("sys", "intern")}


def torch_qualname(module: str, name: str) -> str:
    """The dotted name torch's weights-only unpickler looks up for ``GLOBAL module name``.

    >>> torch_qualname("__builtin__", "set"), torch_qualname("UserDict", "OrderedDict")
    ('builtins.set', 'collections.OrderedDict')
    """
    if (module, name) in _NAME_MAPPING:
        module, name = _NAME_MAPPING[(module, name)]
    else:
        module = _IMPORT_MAPPING.get(module, module)
    return f"{module}.{name}"


#: the one renaming torch.serialization._load applies to every global it looks up
_LIBRARY_MODULE_MAPPING = {"torch.tensor": "torch._tensor"}


def library_qualname(module: str, name: str) -> str:
    """The dotted name of ``GLOBAL module name`` in a protocol 3-5 pickle, read by the library's
    loader: Python 2 names are *not* renamed (the C unpickler renames them below protocol 3
    only), torch's own module renaming is.

    >>> library_qualname("__builtin__", "set"), library_qualname("torch.tensor", "x")
    ('__builtin__.set', 'torch._tensor.x')
    """
    return f"{_LIBRARY_MODULE_MAPPING.get(module, module)}.{name}"

