"""The ranking-method registry: `RANKING_METHODS`, built here from one module per method.

Adding a method: write `library/methods/<name>.py` defining a `RankingMethod`, and add it to
`BUILTIN` below (README, "Adding a ranking method").
"""

from __future__ import annotations

from library.methods.base import (
    Entry,
    MethodRegistry,
    RankContext,
    RankingMethod,
    TargetRows,
    assign_ranks,
    fusion_explain,
    rrf,
    similarity_explain,
)
from library.methods.ensemble import ENSEMBLE
from library.methods.learned import LEARNED
from library.methods.logme import ESM_LOGME, LOGME
from library.methods.similarity import SEMB, TEXTEMB
from library.methods.taskemb import TASKEMB, TASKEMB_FT

BUILTIN: tuple[RankingMethod, ...] = (TEXTEMB, SEMB, TASKEMB, TASKEMB_FT, ENSEMBLE, ESM_LOGME, LOGME, LEARNED)
# `learned` becomes the default once it validates better than every unlearned method on the shipped matrix
# (README, "The learned ranker"); until then the ensemble is.
DEFAULT_METHOD = "ensemble"

RANKING_METHODS = MethodRegistry()
for _method in BUILTIN:
    RANKING_METHODS.register(_method)

__all__ = ["BUILTIN", "DEFAULT_METHOD", "RANKING_METHODS", "Entry", "MethodRegistry", "RankContext", "RankingMethod", "TargetRows",
           "assign_ranks", "fusion_explain", "rrf", "similarity_explain"]
