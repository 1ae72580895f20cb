"""The sections of ``bench/reproduce.py``, one module each, and the document they make up.

Every section module (:mod:`.lottery`, :mod:`.criteria`, :mod:`.at_init`, :mod:`.hessian`,
:mod:`.speed`, :mod:`.llm`) has ``build(ctx)`` (its cached or computed results, with ``analysis`` and
``markdown``, its figures and checks), ``chapter(ctx, res)`` (its part of ``results.md``) and
``headlines(res)`` (its lines of the summary). :mod:`.document` assembles ``results.md`` from them,
:mod:`.discussion` writes section 6, :mod:`.settings` holds the full and quick settings and
:mod:`.common` what they share. Import with ``bench/`` on ``sys.path`` (as ``bench/reproduce.py`` does).
"""

from __future__ import annotations

from . import at_init, criteria, hessian, llm, lottery, speed

#: section name -> its module, in the order of the document (and of computing: ``init`` reads ``criteria``)
MODULES = {
    "lottery": lottery,
    "criteria": criteria,
    "init": at_init,
    "hessian": hessian,
    "speed": speed,
    "llm": llm,
}
SECTIONS = tuple(MODULES)
