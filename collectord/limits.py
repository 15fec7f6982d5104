"""The seed's limits on names and tags, shared by every protocol and the HTTP API.

Declared once as a msgspec Struct so the config section `[limits]` decodes straight into it.
"""

from __future__ import annotations

import msgspec

NAME_PATTERN = r"^[a-zA-Z][a-zA-Z0-9._-]*$"


class Limits(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Caps applied to every sample before it may create or touch a series."""

    max_name_length: int = 255
    max_tags: int = 20
    max_tag_key_length: int = 50
    max_tag_value_length: int = 100
    # Distinct values one tag key may take per metric name (the seed's cardinality cap).
    max_tag_values_per_key: int = 100
    # Active series per daemon; new series beyond it are rejected and counted.
    max_series: int = 1_000_000
