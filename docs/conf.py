"""Sphinx configuration: the API from the docstrings (numpy style) and the Markdown pages of
docs/ (MyST). Build: ``sphinx-build -W -b html docs DIR`` (what ``.ci/docs`` runs)."""

from __future__ import annotations

import importlib.util
from importlib.metadata import version as _version

project = "mpslayout"
author = "the mpslayout developers"
copyright = "the mpslayout developers"
release = _version("mpslayout")  # the installed package the API pages document
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# numpy-style docstrings, as numpy and boost-histogram write them
napoleon_google_docstring = False
napoleon_numpy_docstring = True
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"undoc-members": False}

myst_heading_anchors = 3  # links like layouts.md#1-convolution-weights
myst_enable_extensions = ["colon_fence"]

html_theme = "furo" if importlib.util.find_spec("furo") else "alabaster"
html_title = f"mpslayout {release}"
