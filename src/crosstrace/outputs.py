"""The names of the pipeline's outputs: the one list of each, read by the library and by the
workflow (``rules/common.smk``), so a table or figure added here is built, exported and
required everywhere at once.
"""

from __future__ import annotations

# results/tables/<name>.parquet: what ``crosstrace.database`` exports from the database.
TABLES = (
    "accuracy",
    "training_curve",
    "training_compute",
    "ranking",
    "shared_counts",
    "overlap",
    "concentration",
    "ablation",
    "ablation_draws",
    "unit_ablation_draws",
    "unit_ablation",
    "definition_agreement",
    "people_control",
    "accuracy_summary",
    "training_curve_summary",
    "overlap_summary",
    "concentration_summary",
    "ablation_summary",
    "unit_ablation_summary",
    "people_control_summary",
    "consistency",
    "consistency_by_module",
    "consistency_by_set",
    "representation",
    "token_dependence",
    "consistency_summary",
    "consistency_by_set_summary",
    "representation_summary",
    "token_dependence_summary",
    "contrast_pairs",
    "contrasts",
)

# results/tables/csv/<name>.csv: the tables the HTML report carries beside the figures.
REPORT_TABLES = (
    "accuracy_summary",
    "training_curve_summary",
    "overlap",
    "overlap_summary",
    "ablation_summary",
    "unit_ablation_summary",
    "people_control_summary",
    "concentration_summary",
    "definition_agreement",
    "consistency_by_set_summary",
    "representation_summary",
    "token_dependence_summary",
    "contrasts",
)

# results/figures/<name>.<format>: what ``crosstrace.plots`` draws.
FIGURES = (
    "accuracy",
    "training_curve",
    "shared_by_layer_module",
    "shared_head_heatmap",
    "overlap_vs_k",
    "people_control",
    "concentration",
    "ablation",
    "unit_ablation",
    "consistency_vs_step",
    "consistency_by_set",
    "representation",
    "token_dependence",
)

# Files inside a run folder (results/runs/{model}/{strategy}/seed{seed}/), by role.
TRACE_FILES = {  # by definition of Δ (crosstrace.rank.DEFINITIONS)
    "trajectory": "trace.safetensors",
    "update": "trace_update.safetensors",  # crosstrace.tracefile.kind_path(trajectory, update)
    "endpoint": "endpoint_trace.safetensors",
}
RANKING_FILES = {  # crosstrace.rank
    "ranking": "ranking.parquet",
    "cells": "ranking_cells.parquet",
    "agreement": "ranking_agreement.parquet",
}
TRAIN_LOG_FILE = "train_log.parquet"  # one row per optimizer step
PREDICTIONS_FILE = "predictions.parquet"  # crosstrace.evaluate
ABLATION_FILE = "ablation.parquet"  # crosstrace.ablate
UNIT_ABLATION_FILE = "unit_ablation.parquet"  # crosstrace.ablate with crosstrace.units
PEOPLE_CONTROL_FILE = "people_control.parquet"  # crosstrace.people_control: ranked pairings
PEOPLE_TRACE_FILES = {  # the different-people control's traces, by definition
    "endpoint": "people_trace.safetensors",  # crosstrace.people_control: gradients at θT
    "trajectory": "trace_people.safetensors",  # trace.kinds people: kind_path(trajectory, people)
}
TRAINING_CONSISTENCY_FILE = "consistency.parquet"  # records written during training
TRAINING_CURVE_FILE = "training_curve.parquet"  # crosstrace.curve: evaluations during training
BIO_END_PREDICTIONS_FILE = "bio_end_predictions.parquet"  # θ_BIO of two-stage training
BIO_END_REPRESENTATION_FILE = "bio_end_representation.parquet"  # θ_BIO's name-token states
FINAL_MODEL_FILES = {  # crosstrace.final_model: analyses of θT
    "by_set": "consistency_by_set.parquet",
    "representation": "representation.parquet",
    "token_dependence": "token_dependence.parquet",
}
CONSISTENCY_FILES = {"consistency": TRAINING_CONSISTENCY_FILE, **FINAL_MODEL_FILES}
