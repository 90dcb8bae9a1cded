"""rwsjax: a JAX/Flax segmentation toolkit and Refined Weak Slices (RWS)."""
