"""Repository scripts that are not part of the installed package: the Blender test environment and
the README's pictures. Run them from the repository root with ``python -m scripts.NAME``."""
