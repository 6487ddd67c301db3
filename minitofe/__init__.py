"""minitofe: a readable NumPy reference of ToFe (lagged token freezing and reusing) for ViTs."""
__version__ = "0.1.0"
