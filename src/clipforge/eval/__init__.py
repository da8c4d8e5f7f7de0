"""Evaluation: metrics on scores and embeddings, and the zero-shot and retrieval tasks built on them."""

from .metrics import confusion_matrix, mean_per_class_recall, retrieval_recall, topk_accuracy
from .retrieval import retrieval_evaluate
from .zeroshot import zeroshot_evaluate

__all__ = [
    "confusion_matrix",
    "mean_per_class_recall",
    "retrieval_evaluate",
    "retrieval_recall",
    "topk_accuracy",
    "zeroshot_evaluate",
]
