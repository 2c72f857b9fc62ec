"""Sphinx configuration for the trio_p2p documentation.

Build with ``sphinx-build -W -n --keep-going -b html docs docs/_build/html``.
No intersphinx: the documentation must build without network access, so
references to types of other projects (Trio, the standard library, attrs) are
listed in ``nitpick_ignore_regex`` below instead of being resolved.
"""

from __future__ import annotations

import trio_p2p

project = "trio_p2p"
author = "trio_p2p developers"
copyright = "trio_p2p developers"
version = trio_p2p.__version__
release = trio_p2p.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]

exclude_patterns = ["_build"]
nitpicky = True

# -- autodoc / napoleon ------------------------------------------------------

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
python_use_unqualified_type_names = True

# -- references to other projects (no intersphinx: offline build) -------------

nitpick_ignore_regex = [
    # Trio: channels, exceptions, the clock, streams...
    (r"py:.*", r"trio\..*"),
    # The standard library.
    (r"py:.*", r"(uuid|datetime|collections\.abc|typing|types|contextlib|os|pathlib|enum)\..*"),
    (r"py:class", r"(AsyncIterator|Mapping|Sequence|Iterable|MappingProxyType)"),
    (r"py:class", r"(UUID|NoneType)"),
    # attrs
    (r"py:.*", r"attrs?\..*"),
]

# -- HTML ---------------------------------------------------------------------

html_theme = "alabaster"
html_title = f"trio_p2p {release}"
html_static_path: list[str] = []
