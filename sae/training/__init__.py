"""Training SAEs: `sae train` (batches from a cache or a stream, memory estimate, resumable run
folders) and `sae sweep` over n and k."""
