"""JSON from outside the node, read so that every string in it is text.

How this works: :func:`loads` is :func:`json.loads`, and refuses (with
``ValueError``, like any other JSON the decoder refuses) a document holding
a lone surrogate (U+D800-U+DFFF) in a string or a member name. JSON lets a
sender write one as ``\\ud800``, and Python's decoder takes one sent as raw
CESU-8 octets too (it decodes with ``surrogatepass``); no UTF-8 encoder takes
it, so such a string failed much later, wherever it was first encoded (a
password's hash, a database parameter): a 500 and a traceback on the control
API, a failed write on the sync channel. A cheap scan of the octets first
finds whether one can be there at all; only then are the strings walked.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

__all__ = ["loads"]

# An escape of a surrogate, or the first two octets of one in CESU-8.
_MAYBE: Final = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")
_LONE: Final = re.compile("[\ud800-\udfff]")


def loads(data: bytes) -> Any:
    """``json.loads(data)``; ``ValueError`` also for a lone surrogate anywhere."""
    value = json.loads(data)
    if _MAYBE.search(data) and _holds_lone_surrogate(value):
        raise ValueError("a string holds a lone surrogate (U+D800-U+DFFF), which is not text")
    return value


def _holds_lone_surrogate(value: Any) -> bool:
    # A stack, not recursion: json.loads nests as deep as the interpreter lets it.
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _LONE.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False
