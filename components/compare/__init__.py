"""Compare adapter variants of one spec: expand the variants, mark Pareto fronts, choose one, render.

Three modules, one concern each: `variants` (the variant-spec algebra: which specs to train),
`selection` (typed rows, Pareto fronts, the select rule), `render` (markdown, table rows, chart).
Everything here is pure; `flows/compare.py` runs the stages. See docs/compare.md for the rules in prose.
"""

from components.compare.knowledge import KNOWLEDGE_ARMS, KnowledgeRow, knowledge_comparison
from components.compare.render import plot_chart, render_markdown, table_rows, write_report
from components.compare.selection import (
    SCORE_METRICS,
    SELECT_RULES,
    Measurement,
    VariantResult,
    VariantRow,
    build_report,
    check_select_rule,
    mark_pareto,
    pareto_front,
    score_metric,
    select_variant,
    variant_row,
)
from components.compare.variants import (
    DEFAULT_METHODS,
    LR_FAMILIES,
    MAX_ID,
    MAX_NAME,
    CompareError,
    Variant,
    base_slug,
    expand_variants,
    lr_family,
    merge_adapter,
    parallel_slots,
    requested_overrides,
    variant_base_model,
    variant_id,
    variant_lr,
)

__all__ = [
    "DEFAULT_METHODS", "KNOWLEDGE_ARMS", "KnowledgeRow", "knowledge_comparison", "LR_FAMILIES", "MAX_ID", "MAX_NAME", "SCORE_METRICS", "SELECT_RULES", "CompareError",
    "Measurement", "Variant", "VariantResult", "VariantRow", "base_slug", "build_report", "check_select_rule",
    "expand_variants", "lr_family", "mark_pareto", "merge_adapter", "parallel_slots", "pareto_front", "plot_chart",
    "render_markdown", "requested_overrides", "score_metric", "select_variant", "table_rows", "variant_base_model",
    "variant_id", "variant_lr", "variant_row", "write_report",
]
