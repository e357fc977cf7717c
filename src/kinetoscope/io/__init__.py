"""Video and image files in and out (PyAV), and uint8 <-> float conversions."""
