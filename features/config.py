"""Config section for the feature builders (issue 6). Pure pydantic: importing it must stay cheap (no torch)."""

from __future__ import annotations

from trajstack.spec import StrictModel


class FeaturesConfig(StrictModel):
    pass
