"""Sphinx configuration for the twisted_alive documentation."""

import importlib
import os
import sys

sys.path.insert(0, os.path.abspath(".."))

project = "twisted_alive"
author = "the twisted_alive developers"
copyright = "2026, the twisted_alive developers"
release = importlib.import_module("twisted_alive").__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "_*.md"]
default_role = "py:obj"
myst_heading_anchors = 3
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
suppress_warnings = ["myst.xref_missing"]
intersphinx_mapping = {}
html_theme = "alabaster"
html_title = "twisted_alive"
