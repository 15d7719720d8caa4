"""Analyses over probe frames: norm conventions, run selection, width-scaling slopes, LR transfer,
exports. Pure polars/numpy; the only ssmscope import outside runs.analysis is ssm.predictions.
"""
