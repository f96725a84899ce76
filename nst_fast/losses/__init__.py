"""The losses: Gatys' content, Gram style and total variation (gatys), the
Wasserstein-2 style loss (wasserstein) and the MRF style loss (mrf)."""
