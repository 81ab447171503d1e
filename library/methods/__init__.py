"""The ranking-method registry: `RANKING_METHODS`, built here from one module per method.

Adding a method: write `library/methods/<name>.py` defining a `RankingMethod`, and add it to
`BUILTIN` below (README, "Adding a ranking method").
"""

from __future__ import annotations

from library.default_choice import shipped_choice
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
RANKING_METHODS = MethodRegistry()
for _method in BUILTIN:
    RANKING_METHODS.register(_method)

# `learned` becomes the default once it validates better than every unlearned method on the shipped matrix
# (README, "The learned ranker"); until then the unlearned method the shipped matrix chose by a fixed rule
# (`library.default_choice`, recorded in library/default/default_method.json; the ensemble without a record).
DEFAULT_CHOICE = shipped_choice(RANKING_METHODS.names())
DEFAULT_METHOD = DEFAULT_CHOICE.method

__all__ = ["BUILTIN", "DEFAULT_CHOICE", "DEFAULT_METHOD", "RANKING_METHODS", "Entry", "MethodRegistry", "RankContext", "RankingMethod", "TargetRows",
           "assign_ranks", "fusion_explain", "rrf", "similarity_explain"]
