"""The one registry of token-reduction methods: name -> ``methods.protocol.Method`` (docs/method.md,
"Where each method lives").

It holds the entries and nothing else, and imports nothing, so it sits on the ground floor with the
configs: ``ToFeConfig`` (``tofe/config.py``) asks ``get`` whether a method exists and what it is without
importing any method, and ``minitofe.methods``, above, fills it: the built-in methods are registered, one
line each, in ``minitofe/methods/__init__.py`` (imported with ``minitofe`` itself). A new method is a new
module and one ``register`` line there (or in the user's own code); ``minitofe.methods`` re-exports
``register``, ``get``, ``names``.
"""
_METHODS = {}


def register(method):
    """Add ``method`` (a ``protocol.Method``) under ``method.name``; a name is registered once."""
    if method.name in _METHODS:
        raise ValueError(f"method {method.name!r} is registered already")
    _METHODS[method.name] = method
    return method


def unregister(name):
    """Remove the method ``name`` (a test's toy method, say); -> the entry."""
    return _METHODS.pop(name)


def get(name):
    """The entry for ``name``; an unknown name is a ValueError listing the known ones."""
    if name not in _METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {list(_METHODS)}")
    return _METHODS[name]


def names():
    """Every registered name, in registration order."""
    return tuple(_METHODS)


def entries():
    """Every registered ``Method``, in registration order."""
    return tuple(_METHODS.values())
