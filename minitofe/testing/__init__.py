"""Test helpers that ship with the package: ``fakedevice``, a strict fake GPU array type (docs/contributing.md
§4). Not a kernel and not model code; nothing in the model imports it."""
