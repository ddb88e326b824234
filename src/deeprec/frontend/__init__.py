"""Frontend: validates, splits and routes queries (deeprec.v1.Recommender)."""
