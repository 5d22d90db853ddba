"""Evaluation: task accuracy, passkey retrieval, multiple choice, perplexity, reports.

    task_accuracy.py    greedy/pass@1/pass@k/cons@k on held-out problems (eval, and the
                        held-out checks of sft, grpo and distill)
    metrics.py          the estimators: pass@k (Chen et al. 2021), cons@k, paired differences
    passkey.py          passkey documents and retrieval accuracy (also extend's training data)
    perplexity.py       validation loss over token shards, optionally past a position
    multiple_choice.py  log-likelihood scoring of choices, as lm-evaluation-harness does
    report.py           report.json/.md/.png and the console table
    lm_eval_task.py     an exported checkpoint under lm-evaluation-harness

The `eval` stage (stages/eval.py) puts them together. Import from the module that defines
a name; this package imports nothing.
"""
