"""avatarcam: a still photo as a live, animated webcam."""
__version__ = "0.1.0"
