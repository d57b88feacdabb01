"""Evaluation: localization metrics and reports (:mod:`.localization`), the University-1652 retrieval metrics
(:mod:`.retrieval_metrics`) and the `mobilegeo eval` step function (:mod:`.evaluate`)."""
