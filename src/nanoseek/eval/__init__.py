"""Evaluation and cost: what a model scores and what its training or serving costs."""
