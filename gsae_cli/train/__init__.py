"""`gsae train`: fit an SAE on a store, with resume, resampling and divergence checks."""
