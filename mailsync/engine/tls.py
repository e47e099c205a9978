"""One verifying TLS context per process.

``ssl.create_default_context()`` loads the system certificate store, ≈60 ms here: built
for every connection it was most of the time a flag push spent before its UID STORE.
"""

from __future__ import annotations

import functools
import ssl


@functools.cache
def default_context() -> ssl.SSLContext:
    """Certificate and host-name verification on, system CAs; shared and never mutated."""
    return ssl.create_default_context()
