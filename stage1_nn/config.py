"""Config section for the stage 1 network (issue 5). Pure pydantic: importing it must stay cheap (no torch)."""

from __future__ import annotations

from trajstack.spec import StrictModel


class Stage1Config(StrictModel):
    pass
