"""Memorization metrics: exact FAISS search, the nearest-neighbour ratio, copy-detection and extraction
criteria, embedders, memorization ratios with Wilson intervals, reproducibility."""

from memorize.metrics.calibration import calibrated_threshold
from memorize.metrics.criteria import (CopyScores, NNRatioScores, copy_similarity, memorization_ratio, nn_ratio,
                                       nn_ratio_within_class, reproducibility_score, wilson_interval)
from memorize.metrics.extraction import ExtractionScores, calibrated_extraction_threshold, extraction_score
from memorize.metrics.embedders import Embedder, EmbedderError, load_embedder
from memorize.metrics.search import knn, search_backend

__all__ = ["CopyScores", "ExtractionScores", "calibrated_extraction_threshold", "calibrated_threshold", "Embedder", "EmbedderError", "NNRatioScores", "copy_similarity", "extraction_score", "knn", "load_embedder",
           "memorization_ratio", "nn_ratio", "nn_ratio_within_class", "reproducibility_score", "search_backend",
           "wilson_interval"]
