"""Config section for the stage 2 GBDTs (issue 6). Pure pydantic: importing it must stay cheap (no torch)."""

from __future__ import annotations

from trajstack.spec import StrictModel


class Stage2Config(StrictModel):
    pass
