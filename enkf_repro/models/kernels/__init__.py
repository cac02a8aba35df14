"""Fused GPU kernels (Triton) for the ensemble forward pass.

``paper_cnn_triton``: the paper's CNN evaluated for a chunk of ensemble members in two kernels
(conv1 + pool + activation; conv2 + activation [+ pool] + fc). Triton is optional: the module
imports without it and :func:`paper_cnn_triton.available` says whether the kernels can run.
"""
