"""The one base class of every error a user can fix: `TrajstackError`.

The CLI catches it once (`trajstack.cli.main`) and prints its message on one line with exit
code 2, no traceback; anything else is a bug and keeps its traceback. Subclasses keep their
historical names and built-in bases (`ConfigError` is still a `ValueError`, ...), so existing
`except` clauses keep working.
"""

from __future__ import annotations


class TrajstackError(Exception):
    """A problem with the input, config or artifacts; the message says what to do."""


def one_line(err: BaseException) -> str:
    """The error's message on one line (a multi-line message's lines joined by '; '), its notes
    (`add_note`: context added on the way up, e.g. which fold failed) after it."""
    text = "\n".join([str(err), *getattr(err, "__notes__", ())])
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    head, rest = lines[0], lines[1:]
    if not rest:
        return head
    return f"{head} {'; '.join(rest)}" if head.endswith(":") else "; ".join(lines)
