"""Precomputes every latent's dashboard into one DuckDB file (see DESIGN §7)."""
