"""Position estimation: retrieval → position + covariance + status (:mod:`.retrieval`); temporal filter (:mod:`.kalman`)."""
