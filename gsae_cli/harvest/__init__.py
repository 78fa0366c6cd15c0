"""`gsae harvest`: run the model over the corpus and write the activations at a site to a store."""
