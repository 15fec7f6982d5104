"""The dashboard page: hand-written HTML, CSS and JavaScript served as-is (no build step).

`collectord/api/dashboard_api.py` serves these files; the page only talks to the public API.
"""

from __future__ import annotations

from pathlib import Path

DIRECTORY = Path(__file__).parent
