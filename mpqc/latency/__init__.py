"""Latency of bit-serial layers on a target: measurement (local or TVM RPC), the JSONL
database, the XGBoost predictor with its exact table, and network-level prediction."""
from mpqc.latency.records import LatencyRecord, LayerShape, append_db, read_db
from mpqc.latency.space import Job, model_jobs, parse_bits, random_jobs, random_shapes

__all__ = ["LatencyRecord", "LayerShape", "append_db", "read_db", "Job", "model_jobs",
           "parse_bits", "random_jobs", "random_shapes"]
