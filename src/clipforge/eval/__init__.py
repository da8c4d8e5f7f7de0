"""Evaluation: metrics, datasets, tasks (zero-shot, retrieval, linear probe, few-shot), cached features, reports.

from clipforge.eval import EvalRequest, run_evaluations
run_evaluations({"mine": model}, [EvalRequest("zeroshot", "cifar10", root="/data")], out_dir="report")
"""

from .datasets import DatasetNotFound, list_eval_datasets, load_eval_dataset
from .fewshot import few_shot
from .metrics import confusion_matrix, mean_per_class_recall, retrieval_recall, topk_accuracy
from .probe import linear_probe
from .retrieval import retrieval_evaluate
from .runner import run_evaluations
from .tasks import EvalRequest, run_task
from .zeroshot import zeroshot_evaluate

__all__ = [
    "DatasetNotFound",
    "EvalRequest",
    "confusion_matrix",
    "few_shot",
    "linear_probe",
    "list_eval_datasets",
    "load_eval_dataset",
    "mean_per_class_recall",
    "retrieval_evaluate",
    "retrieval_recall",
    "run_evaluations",
    "run_task",
    "topk_accuracy",
    "zeroshot_evaluate",
]
