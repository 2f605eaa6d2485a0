"""Getting activations: the language model and its hook points, corpora, contexts, the harvested
cache, and the source that reads a cache or runs the model on the fly."""
