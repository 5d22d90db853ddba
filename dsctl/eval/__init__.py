"""Evaluation: task metrics (pass@k, cons@k), passkey retrieval, multiple choice, reports.

    from dsctl.eval import pass_at_k, cons_at_k, passkey_accuracy, score_multiple_choice
    pass_at_k(n=10, c=3, k=5)                     # unbiased estimator (Chen et al. 2021)
    passkey_accuracy(model, tokenizer, length=1024, trials=10)
    plot_report_files([path_a, path_b], "compare.png")

The `eval` stage (stages/eval.py) puts them together; `extend` uses the passkey code.
"""

from dsctl.eval.metrics import cons_at_k, majority_answer, pass_at_1, pass_at_k
from dsctl.eval.multiple_choice import load_choice_questions, score_multiple_choice
from dsctl.eval.passkey import make_passkey_document, passkey_accuracy, passkey_documents
from dsctl.eval.report import load_report, plot_report_files, write_report

__all__ = [
    "cons_at_k", "load_choice_questions", "load_report", "majority_answer", "make_passkey_document",
    "pass_at_1", "pass_at_k", "passkey_accuracy", "passkey_documents", "plot_report_files",
    "score_multiple_choice", "write_report",
]
