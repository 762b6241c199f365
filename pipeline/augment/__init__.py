"""Extra SST training data: EDA rewrites (:mod:`.eda`) and Amazon reviews picked by similarity
to the SST label centroids (:mod:`.reviews`)."""
