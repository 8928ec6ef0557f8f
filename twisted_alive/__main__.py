"""
``python -m twisted_alive``: the ``twisted-alive`` command line.
"""

from __future__ import annotations

from twisted_alive.tools.cli import main

if __name__ == "__main__":
    main()
