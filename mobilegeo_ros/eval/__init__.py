"""Evaluation: localization metrics and reports (:mod:`.localization`)."""
