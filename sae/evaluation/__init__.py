"""Evaluating an SAE: `sae eval` (reconstruction, downstream loss, dead latents) and the paper's
feature-quality metrics (explanations, probes, ablation sparsity)."""
