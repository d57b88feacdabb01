"""Offline training of the embedding network: losses, the 4-stage student, teachers, datasets and the loop.

Pure core (no rclpy). Entry points: ``mobilegeo train`` (:mod:`.loop`) and ``mobilegeo eval``
(:mod:`mobilegeo_ros.eval.retrieval_metrics`). Every default that the papers do not state is a config value named as a
hypothesis in the docstring that uses it (see /work/shared/research/papers.md for the sources).
"""
