"""Garbage collector settings for a process that serves (``trilb serve``, each of its workers).

Why. CPython frees most objects when their last reference goes; its cyclic garbage collector is
for reference cycles, and finds them by walking the objects it tracks, in three generations: a
young collection walks the objects made since the previous one, a full collection all of them.
A connection holds 40-110 tracked objects (its task's coroutines, parsers, cancel scopes) for as
long as the client stays, so with 2,000 slow clients connected a full collection walks 100,000 to
190,000 objects and stops every connection for 60-190 ms.

With CPython's defaults (``gc.set_threshold(700, 10, 10)``) full collections came every 4-5 s
under that load: the default rule counts objects that outlived two collections, and a slow
client's wait state (a second from one byte to the next) lives just that long before it dies.
The middle generation, collected with every twelfth young collection, held some 27,000 objects
(10-40 ms). A normal client's p99 latency went from 3 ms to 80-110 ms (``bench/slow_clients.py``,
bench/README.rst "Slow clients").

:func:`tune_for_serving`:

* freezes what start-up made (``gc.freeze()``: modules, classes, the configuration; some 37,000
  objects that no collection walks again);
* collects the middle generation with every second young collection (threshold 0), so that each
  walks only what the one before left: 1,500-4,000 objects, 1-5 ms (up to 30,000 when hundreds
  of clients connect at once);
* makes a full collection wait for 1,000 middle-generation collections (threshold 10 before):
  about once a minute with 2,000 slow clients and 5,000 requests/s, rarer when less happens.
  The same load then gave p99 7 ms, as with the collector disabled.

The price: a reference cycle that outlives two young collections is freed at the next full
collection only. trilb's request path makes none (tests/proxy/test_exchange_memory.py).

It is process-wide: a program that embeds trilb decides for itself whether to call it.
"""

from __future__ import annotations

import gc

__all__ = ["tune_for_serving"]

#: a young collection once allocations exceed deallocations by this much (CPython's default)
YOUNG = 700
#: with 0, every second young collection takes the middle generation along (CPython's default,
#: 10: every twelfth)
MIDDLE = 0
#: a full collection after this many middle-generation collections
FULL = 1000


def tune_for_serving() -> None:
    """Set the garbage collector up for a long-running balancer (see the module's docstring):
    freeze what start-up made, collect young objects in small steps, the whole heap rarely. Call
    it once, when the configuration is loaded, just before the balancer starts."""
    gc.collect()  # start-up garbage: not to be frozen
    gc.freeze()
    gc.set_threshold(YOUNG, MIDDLE, FULL)
