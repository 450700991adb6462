"""Latency-constrained bit-width search: expected cost, EBS and BP-NAS objectives, the
alternating search loop and the fine-tuning of the chosen configuration."""
from mpqc.search.objective import (CostTable, barrier_penalty, bitops_table, expected_cost,
                                   prob1_regularizer, repair_to_budget, spend_slack)

__all__ = ["CostTable", "bitops_table", "expected_cost", "barrier_penalty",
           "prob1_regularizer", "repair_to_budget", "spend_slack"]
