"""kinetoscope: an open implementation of the recipe behind Sora-class video generators."""

__version__ = "0.1.0"
