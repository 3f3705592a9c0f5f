"""Post-training compression of linear layers (paper Section 5.3, Table 5, Appendices D and H).

`gptq` (Hessian, round-to-nearest, GPTQ), `sparsegpt` (SparseGPT unstructured and n:m, magnitude pruning),
`pack` (bit packing and the Appendix D size formula) are pure tensor functions; `apply` runs them over a
model's body, calibrated on that model's own activations.
"""
