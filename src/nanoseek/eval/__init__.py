"""What a model scores, and what its training costs.

- evaluate.py: `nanoseek eval`: k samples per prompt give pass@1, cons@k and pass@k, budget forcing
  gives accuracy against the thinking budget; results as JSON, Markdown, samples and plots;
- metrics.py: the unbiased pass@k estimator and the majority vote behind cons@k;
- cost.py: GPU-hours and dollars from a config, a token count, a GPU and an MFU.
"""
